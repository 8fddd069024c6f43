"""LLaDA2.0 (LLaDA2.0-mini, -flash): the shared body (`modeling_body.py`) with a fused q/k/v projection, q/k RMSNorm
per head, RoPE on the first `rotary_dim` dimensions, and from layer `first_k_dense_replace` on a mixture of experts
routed by transformers' DeepSeek-V3 router (sigmoid scores, expert bias used only to choose, group-limited choice,
renormalised weights times `routed_scaling_factor`) plus the shared expert(s).

Official checkpoints load unchanged: a conversion mapping for `model_type="llada2_moe"` renames `word_embeddings`,
`attention.query_key_value` / `dense` / `query_layernorm` / `key_layernorm` at load time; the MLP keys (`mlp.gate`,
`mlp.gate.expert_bias`, `mlp.experts.{e}`, `mlp.shared_experts`) are the official ones.
"""

import torch
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from .configuration_llada2 import LLaDA2MoeConfig
from .generation_llada2 import LLaDA2GenerationConfig, LLaDA2GenerationMixin
from .modeling_body import (
    LLaDAFamilyModel,
    LLaDAFamilyModelLM,
    LLaDAFamilyPreTrainedModel,
    LLaDAGroupedRouter,
    LLaDASparseMoeBlock,
    MoeMaskedLMOutput,
    load_balancing_loss,
)

# Official key -> native key, one anchored rule per tensor kind (one capture group each, as the loader expects).
LLADA2_OFFICIAL_KEY_MAPPING = {
    r"^model\.word_embeddings\.": "model.embed_tokens.",
    r"^model\.layers\.(\d+)\.attention\.query_key_value\.": r"model.layers.\1.self_attn.qkv_proj.",
    r"^model\.layers\.(\d+)\.attention\.dense\.": r"model.layers.\1.self_attn.o_proj.",
    r"^model\.layers\.(\d+)\.attention\.query_layernorm\.": r"model.layers.\1.self_attn.q_norm.",
    r"^model\.layers\.(\d+)\.attention\.key_layernorm\.": r"model.layers.\1.self_attn.k_norm.",
}
register_checkpoint_conversion_mapping(
    "llada2_moe",
    [WeightRenaming(source, target) for source, target in LLADA2_OFFICIAL_KEY_MAPPING.items()],
    overwrite=True,
)


class LLaDA2SparseMoeBlock(LLaDASparseMoeBlock):
    """Grouped sigmoid router (`gate`), routed experts (`experts.{e}`) and shared expert(s) (`shared_experts`)."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        shared = config.moe_intermediate_size * config.num_shared_experts
        super().__init__(config, LLaDAGroupedRouter(config), config.moe_intermediate_size, shared)

    def route(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        router_logits, top_weights, top_idx = self.gate(hidden_states)
        return router_logits, top_idx, top_weights

    @staticmethod
    def probabilities(router_logits: torch.Tensor) -> torch.Tensor:
        """The auxiliary loss's router probabilities: sigmoid scores normalised over the experts."""
        scores = router_logits.sigmoid()
        return scores / scores.sum(-1, keepdim=True)


class LLaDA2PreTrainedModel(LLaDAFamilyPreTrainedModel):
    config: LLaDA2MoeConfig
    config_class = LLaDA2MoeConfig


class LLaDA2MoeModel(LLaDA2PreTrainedModel, LLaDAFamilyModel):
    def attention_options(self, config: LLaDA2MoeConfig) -> dict:
        return {"fused_qkv": True, "qk_norm": True, "qkv_bias": config.use_qkv_bias, "out_bias": config.use_bias}

    def make_mlp(self, config: LLaDA2MoeConfig, layer_idx: int) -> tuple:
        moe = config.is_moe_layer(layer_idx)
        return (LLaDA2SparseMoeBlock(config), None) if moe else super().make_mlp(config, layer_idx)


class LLaDA2MoeModelLM(LLaDA2PreTrainedModel, LLaDAFamilyModelLM, LLaDA2GenerationMixin):
    """LLaDA2.0 with its untied LM head; `generate()` is the LLaDA2.0 sampler (`generation_llada2.py`), `official=True`
    reproducing the hub `generate()` token for token. Loss and router outputs: `LLaDAFamilyModelLM` (aux-loss
    probabilities: the per-token-normalised sigmoid scores)."""

    body_class = LLaDA2MoeModel
    moe_block = LLaDA2SparseMoeBlock
    generation_config_class = LLaDA2GenerationConfig


__all__ = [
    "LLADA2_OFFICIAL_KEY_MAPPING",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2PreTrainedModel",
    "MoeMaskedLMOutput",
    "load_balancing_loss",
]
