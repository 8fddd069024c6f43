"""LLaDA-MoE (LLaDA-MoE-7B-A1B, OLMoE-shaped): the shared body (`modeling_body.py`) with split q/k/v, q/k RMSNorm per
head (`qk_layernorm`), partial RoPE, and per layer (`moe_layer_freq`) a dense SwiGLU MLP or a mixture of experts
(softmax router, the expert bias *added to the probabilities*, top-k, renormalised only if `norm_topk_prob`) plus an
optional layer-level shared expert. Official checkpoints already use these key names.

**Deviation from the official forward:** it drops any attention mask (full attention, padding included); this one
honours it, so a left-padded row gets the logits (and `generate()` answers) it gets alone. Unpadded, both agree.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.conversion_mapping import register_checkpoint_conversion_mapping

from .configuration_llada_moe import LLaDAMoEConfig
from .generation_llada import DiffusionGenerationMixin, LLaDAGenerationConfig
from .modeling_body import (
    LLaDAFamilyModel,
    LLaDAFamilyModelLM,
    LLaDAFamilyPreTrainedModel,
    LLaDAMLP,
    LLaDASparseMoeBlock,
)

# model_type "llada" carries LLaDA-8B's key renaming (and its inverse on save): these classes need none. A mapping
# registered under the class name takes priority over the model_type one.
for _class_name in ("LLaDAMoEModelLM", "LLaDAMoEModel"):
    register_checkpoint_conversion_mapping(_class_name, [], overwrite=True)


class LLaDAMoESparseMoeBlock(LLaDASparseMoeBlock):
    """Softmax router (`gate`) with `expert_bias` added to the probabilities, top-k experts (`experts.{e}`)."""

    def __init__(self, config: LLaDAMoEConfig) -> None:
        gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        super().__init__(config, gate, config.expert_intermediate_size)
        self.top_k, self.norm_topk_prob = config.num_experts_per_tok, config.norm_topk_prob
        bias = torch.zeros(config.num_experts) if config.moe_router_enable_expert_bias else None
        self.expert_bias = None if bias is None else nn.Buffer(bias)

    def route(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        router_logits = self.gate(hidden_states)
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            probs = probs + self.expert_bias.float()
        top_weights, top_idx = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_idx, top_weights

    @staticmethod
    def probabilities(router_logits: torch.Tensor) -> torch.Tensor:
        return router_logits.softmax(-1)


class LLaDAMoEPreTrainedModel(LLaDAFamilyPreTrainedModel):
    config: LLaDAMoEConfig
    config_class = LLaDAMoEConfig


class LLaDAMoEModel(LLaDAMoEPreTrainedModel, LLaDAFamilyModel):
    def attention_options(self, config: LLaDAMoEConfig) -> dict:
        bias = config.attention_bias
        return {"qk_norm": config.qk_layernorm, "qkv_bias": bias, "out_bias": bias}

    def make_mlp(self, config: LLaDAMoEConfig, layer_idx: int) -> tuple:
        if not config.is_moe_layer(layer_idx):
            return LLaDAMLP(config, config.dense_intermediate_size), None
        block, shared = LLaDAMoESparseMoeBlock(config), config.shared_expert_intermediate_size
        return block, LLaDAMLP(config, shared) if shared else None


class LLaDAMoEModelLM(LLaDAMoEPreTrainedModel, LLaDAFamilyModelLM, DiffusionGenerationMixin):
    """LLaDA-MoE with its untied LM head; `generate()` is the LLaDA sampler (the official ML-GSAI `generate.py`
    semantics). Loss and router outputs: `LLaDAFamilyModelLM` (aux-loss probabilities: the router softmax)."""

    body_class = LLaDAMoEModel
    moe_block = LLaDAMoESparseMoeBlock
    generation_config_class = LLaDAGenerationConfig


__all__ = ["LLaDAMoEModel", "LLaDAMoEModelLM", "LLaDAMoEPreTrainedModel"]
