"""llada_hf: LLaDA masked-diffusion language models, native to Hugging Face transformers.

`import llada_hf` registers the "llada" and "llada2_moe" model types with the Auto classes, so official checkpoints of
LLaDA-8B, LLaDA-MoE and LLaDA2.0 load with `AutoModel.from_pretrained(path)` (which, as in the official `auto_map`,
returns the model with its LM head). LLaDA-MoE shares model_type "llada" with LLaDA-8B: `LLaDAConfig.from_dict` builds
an `LLaDAMoEConfig` for it (by `architectures`, or by its keys), and each config class maps to its own model class.
"""

from .generation import DiffusionGenerationMixin, LLaDAGenerationConfig
from .modeling import (
    LLADA2_OFFICIAL_KEY_MAPPING,
    OFFICIAL_KEY_MAPPING,
    LLaDA2MoeConfig,
    LLaDA2MoeModel,
    LLaDA2MoeModelLM,
    LLaDAConfig,
    LLaDAModel,
    LLaDAModelLM,
    LLaDAMoEConfig,
    LLaDAMoEModel,
    LLaDAMoEModelLM,
    LLaDAPreTrainedModel,
)

__version__ = "0.1.0"


def register() -> None:
    """Register the LLaDA family with AutoConfig / AutoModel / AutoModelForMaskedLM / AutoModelForCausalLM
    (idempotent).

    `AutoModel` maps to the model with the head (`LLaDAModelLM`, `LLaDAMoEModelLM`, `LLaDA2MoeModelLM`), as the
    official `auto_map` does; `AutoModelForCausalLM` is what `pipeline("text-generation")` loads. Only "llada" and
    "llada2_moe" are registered with `AutoConfig`; `LLaDAMoEConfig` (model_type "llada") is reached through
    `LLaDAConfig.from_dict`.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
    AutoConfig.register("llada2_moe", LLaDA2MoeConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
        auto_class.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
        auto_class.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)
        auto_class.register(LLaDA2MoeConfig, LLaDA2MoeModelLM, exist_ok=True)


register()

__all__ = [
    "LLADA2_OFFICIAL_KEY_MAPPING",
    "OFFICIAL_KEY_MAPPING",
    "DiffusionGenerationMixin",
    "LLaDA2MoeConfig",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDAConfig",
    "LLaDAGenerationConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAMoEConfig",
    "LLaDAMoEModel",
    "LLaDAMoEModelLM",
    "LLaDAPreTrainedModel",
    "register",
]
