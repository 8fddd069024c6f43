"""Hub-ready LLaDA-family configs and models (exported flat next to a checkpoint for `trust_remote_code=True`).

LLaDA-8B (`LLaDAConfig`, `LLaDAModelLM`), LLaDA2.0 (`LLaDA2MoeConfig`, `LLaDA2MoeModelLM`, model_type "llada2_moe")
and LLaDA-MoE (`LLaDAMoEConfig`, `LLaDAMoEModelLM`, model_type "llada" like LLaDA-8B, told apart by `architectures`).
"""

import importlib
import sys

# The model files import the generation mixins as flat siblings (`from .generation_llada import ...`), the layout of
# an exported checkpoint. Inside the installed package those siblings live in `llada_hf.generation`: alias them here.
for _name in ("generation_llada", "generation_llada2"):
    sys.modules.setdefault(f"{__name__}.{_name}", importlib.import_module(f"llada_hf.generation.{_name}"))

from .configuration_llada import LLaDAConfig, LLaDAMoEConfig  # noqa: E402
from .configuration_llada2 import LLaDA2MoeConfig  # noqa: E402
from .modeling_body import masked_diffusion_loss  # noqa: E402
from .modeling_llada import OFFICIAL_KEY_MAPPING, LLaDAModel, LLaDAModelLM, LLaDAPreTrainedModel  # noqa: E402
from .modeling_llada2 import (  # noqa: E402
    LLADA2_OFFICIAL_KEY_MAPPING,
    LLaDA2MoeModel,
    LLaDA2MoeModelLM,
    LLaDA2PreTrainedModel,
)
from .modeling_llada_moe import LLaDAMoEModel, LLaDAMoEModelLM, LLaDAMoEPreTrainedModel  # noqa: E402

__all__ = [
    "LLADA2_OFFICIAL_KEY_MAPPING", "OFFICIAL_KEY_MAPPING", "LLaDA2MoeConfig", "LLaDA2MoeModel", "LLaDA2MoeModelLM",
    "LLaDA2PreTrainedModel", "LLaDAConfig", "LLaDAModel", "LLaDAModelLM", "LLaDAMoEConfig", "LLaDAMoEModel",
    "LLaDAMoEModelLM", "LLaDAMoEPreTrainedModel", "LLaDAPreTrainedModel", "masked_diffusion_loss",
]  # fmt: skip
