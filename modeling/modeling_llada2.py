"""LLaDA2.0 (-mini, -flash): the shared body (`modeling_body.py`) with fused q/k/v, q/k RMSNorm per head, RoPE on the
first `rotary_dim` dimensions, and from layer `first_k_dense_replace` on experts routed by transformers' DeepSeek-V3
router plus the shared expert(s). Official checkpoints load unchanged: a conversion mapping for `llada2_moe` renames
the attention and embedding keys; the MLP keys are the official ones."""

import torch
from torch import nn
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from .configuration_llada2 import LLaDA2MoeConfig
from .generation_llada2 import LLaDA2GenerationConfig, LLaDA2GenerationMixin
from .modeling_body import (
    LLaDAFamilyModel,
    LLaDAFamilyModelLM,
    LLaDAFamilyPreTrainedModel,
    LLaDASparseMoeBlock,
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


class LLaDAGroupedRouter(DeepseekV3TopkRouter):
    """transformers' DeepSeek-V3 router (sigmoid scores, group-limited top-k, expert bias used only to choose,
    renormalised weights times `routed_scaling_factor`) under the official LLaDA2 names `gate.weight` and
    `gate.expert_bias` (a buffer trained by the recipe's balancing rule; absent without
    `moe_router_enable_expert_bias`). Returns (router_logits fp32, top-k weights fp32, top-k expert ids)."""

    def __init__(self, config) -> None:
        nn.Module.__init__(self)
        self.top_k, self.num_experts = config.num_experts_per_tok, config.num_experts
        self.hidden_dim = config.hidden_size
        self.num_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        bias = torch.zeros(config.num_experts) if config.moe_router_enable_expert_bias else None
        self.expert_bias = None if bias is None else nn.Buffer(bias)

    @property
    def e_score_correction_bias(self) -> torch.Tensor | float:
        return 0.0 if self.expert_bias is None else self.expert_bias.float()


class LLaDA2SparseMoeBlock(LLaDASparseMoeBlock):
    """Grouped sigmoid router (`gate`), routed experts (`experts.{e}`) and shared expert(s) (`shared_experts`)."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        shared = config.moe_intermediate_size * config.num_shared_experts
        super().__init__(config, LLaDAGroupedRouter(config), config.moe_intermediate_size, shared)

    @staticmethod
    def probabilities(router_logits: torch.Tensor) -> torch.Tensor:
        """The auxiliary loss's router probabilities: sigmoid scores normalised over the experts."""
        scores = router_logits.sigmoid()
        return scores / scores.sum(-1, keepdim=True)


class LLaDA2PreTrainedModel(LLaDAFamilyPreTrainedModel):
    config: LLaDA2MoeConfig


class LLaDA2MoeModel(LLaDA2PreTrainedModel, LLaDAFamilyModel):
    def attention_options(self, config: LLaDA2MoeConfig) -> dict:
        return {"fused_qkv": True, "qk_norm": True, "qkv_bias": config.use_qkv_bias, "out_bias": config.use_bias}

    def make_mlp(self, config: LLaDA2MoeConfig, layer_idx: int) -> tuple:
        moe = config.is_moe_layer(layer_idx)
        return (LLaDA2SparseMoeBlock(config), None) if moe else super().make_mlp(config, layer_idx)


class LLaDA2MoeModelLM(LLaDA2PreTrainedModel, LLaDAFamilyModelLM, LLaDA2GenerationMixin):
    """LLaDA2.0 with its untied LM head; `generate()` is the LLaDA2.0 sampler (`generation_llada2.py`)."""

    body_class = LLaDA2MoeModel
    moe_block = LLaDA2SparseMoeBlock
    generation_config_class = LLaDA2GenerationConfig


__all__ = ["LLADA2_OFFICIAL_KEY_MAPPING", "LLaDA2MoeModel", "LLaDA2MoeModelLM", "LLaDA2PreTrainedModel"]
