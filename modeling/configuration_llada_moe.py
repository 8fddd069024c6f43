"""LLaDA-MoE configuration: `LLaDAMoEConfig` lives beside `LLaDAConfig` (both are model_type "llada"; `LLaDAConfig`
hands a LLaDA-MoE dict to it); this module keeps the name the remote-code `auto_map` points at."""

from .configuration_llada import LLaDAMoEConfig

__all__ = ["LLaDAMoEConfig"]
