"""Diffusion generation: `LLaDAGenerationConfig` and `DiffusionGenerationMixin` (exported flat with the model)."""

from .generation_llada import DiffusionGenerationMixin, LLaDAGenerationConfig

__all__ = ["DiffusionGenerationMixin", "LLaDAGenerationConfig"]
