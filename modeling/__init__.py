"""Hub-ready LLaDA-family configs and models (exported flat next to a checkpoint for `trust_remote_code=True`).

LLaDA-8B (`LLaDAConfig`, `LLaDAModelLM`), LLaDA2.0 (`LLaDA2MoeConfig`, `LLaDA2MoeModelLM`, model_type "llada2_moe")
and LLaDA-MoE (`LLaDAMoEConfig`, `LLaDAMoEModelLM`, model_type "llada" like LLaDA-8B, told apart by `architectures`).
"""

import importlib
import sys

# The model file imports the generation mixin as a flat sibling (`from .generation_llada import ...`), the layout of
# an exported checkpoint. Inside the installed package that sibling lives in `llada_hf.generation`: alias it here.
sys.modules.setdefault(__name__ + ".generation_llada", importlib.import_module("llada_hf.generation.generation_llada"))
_GENERATION_LLADA2 = importlib.import_module("llada_hf.generation.generation_llada2")
sys.modules.setdefault(__name__ + ".generation_llada2", _GENERATION_LLADA2)

from .configuration_llada import LLaDAConfig  # noqa: E402
from .configuration_llada2 import LLaDA2MoeConfig  # noqa: E402
from .configuration_llada_moe import LLaDAMoEConfig  # noqa: E402
from .modeling_llada import (  # noqa: E402
    OFFICIAL_KEY_MAPPING,
    LLaDAModel,
    LLaDAModelLM,
    LLaDAPreTrainedModel,
    masked_diffusion_loss,
)
from .modeling_llada2 import (  # noqa: E402
    LLADA2_OFFICIAL_KEY_MAPPING,
    LLaDA2MoeModel,
    LLaDA2MoeModelLM,
    LLaDA2PreTrainedModel,
)
from .modeling_llada_moe import LLaDAMoEModel, LLaDAMoEModelLM, LLaDAMoEPreTrainedModel  # noqa: E402

__all__ = [
    "LLADA2_OFFICIAL_KEY_MAPPING",
    "OFFICIAL_KEY_MAPPING",
    "LLaDA2MoeConfig",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2PreTrainedModel",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAMoEConfig",
    "LLaDAMoEModel",
    "LLaDAMoEModelLM",
    "LLaDAMoEPreTrainedModel",
    "LLaDAPreTrainedModel",
    "masked_diffusion_loss",
]
