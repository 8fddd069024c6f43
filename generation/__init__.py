"""Diffusion generation: `LLaDAGenerationConfig` and `DiffusionGenerationMixin` (exported flat with the model)."""

from .generation_llada import (
    DiffusionGenerateOutput,
    DiffusionGenerationMixin,
    DiffusionSampler,
    LLaDAGenerationConfig,
    classifier_free_guidance,
    estimate_step_bytes,
)

__all__ = [
    "DiffusionGenerateOutput",
    "DiffusionGenerationMixin",
    "DiffusionSampler",
    "LLaDAGenerationConfig",
    "classifier_free_guidance",
    "estimate_step_bytes",
]
