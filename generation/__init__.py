"""Diffusion generation: the engine (`DiffusionGenerationMixin`), its parts and the family configs (exported flat
with the model)."""

from .generation_llada import (
    DiffusionGenerateOutput,
    DiffusionGenerationMixin,
    DiffusionSampler,
    DiffusionState,
    LLaDAGenerationConfig,
)
from .generation_parts import SamplerParts, classifier_free_guidance, estimate_step_bytes

__all__ = [
    "DiffusionGenerateOutput",
    "DiffusionGenerationMixin",
    "DiffusionSampler",
    "DiffusionState",
    "LLaDAGenerationConfig",
    "SamplerParts",
    "classifier_free_guidance",
    "estimate_step_bytes",
]
