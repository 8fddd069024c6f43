"""llada_hf: LLaDA masked-diffusion language models, native to Hugging Face transformers.

`import llada_hf` registers the "llada" model type with the Auto classes, so official GSAI-ML checkpoints load with
`AutoModel.from_pretrained(path)` (which, as in the official `auto_map`, returns the model with its LM head).
"""

from .generation import DiffusionGenerationMixin, LLaDAGenerationConfig
from .modeling import OFFICIAL_KEY_MAPPING, LLaDAConfig, LLaDAModel, LLaDAModelLM, LLaDAPreTrainedModel

__version__ = "0.1.0"


def register() -> None:
    """Register LLaDA with AutoConfig / AutoModel / AutoModelForMaskedLM / AutoModelForCausalLM (idempotent).

    `AutoModel` maps to `LLaDAModelLM` (with the head), as the official `auto_map` does; `AutoModelForCausalLM` is
    what `pipeline("text-generation")` loads.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
        auto_class.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)


register()

__all__ = [
    "OFFICIAL_KEY_MAPPING",
    "DiffusionGenerationMixin",
    "LLaDAConfig",
    "LLaDAGenerationConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAPreTrainedModel",
    "register",
]
