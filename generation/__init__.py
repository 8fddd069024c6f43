"""Diffusion generation: the engine, its parts and the family configs (exported flat with the model)."""

from .generation_llada import DiffusionGenerationMixin, LLaDAGenerationConfig
from .generation_parts import classifier_free_guidance, estimate_step_bytes

__all__ = ["DiffusionGenerationMixin", "LLaDAGenerationConfig", "classifier_free_guidance", "estimate_step_bytes"]
