"""Hub-ready LLaDA config and model (exported flat next to a checkpoint for `trust_remote_code=True`)."""

import importlib
import sys

# The model file imports the generation mixin as a flat sibling (`from .generation_llada import ...`), the layout of
# an exported checkpoint. Inside the installed package that sibling lives in `llada_hf.generation`: alias it here.
sys.modules.setdefault(__name__ + ".generation_llada", importlib.import_module("llada_hf.generation.generation_llada"))

from .configuration_llada import LLaDAConfig  # noqa: E402
from .modeling_llada import (  # noqa: E402
    OFFICIAL_KEY_MAPPING,
    LLaDAModel,
    LLaDAModelLM,
    LLaDAPreTrainedModel,
    masked_diffusion_loss,
)

__all__ = [
    "OFFICIAL_KEY_MAPPING",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAPreTrainedModel",
    "masked_diffusion_loss",
]
