"""LLaDA-8B: the shared body (`modeling_body.py`) with split q/k/v, no q/k norm, a dense MLP and full RoPE from fp32
tables built on the CPU (so bf16 results match the official code bit for bit); no padding index (EOS = PAD is a
training target). Official checkpoints (`model.transformer.blocks.{i}.q_proj`, ...) load unchanged: a conversion
mapping for `model_type="llada"` renames their keys."""

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from .configuration_llada import LLaDAConfig
from .generation_llada import DiffusionGenerationMixin, LLaDAGenerationConfig
from .modeling_body import LLaDAFamilyModel, LLaDAFamilyModelLM, LLaDAFamilyPreTrainedModel, inverse_frequencies

# Official key -> native key, one anchored rule per tensor kind (one capture group each, as the loader expects).
OFFICIAL_KEY_MAPPING = {
    r"^model\.transformer\.wte\.": "model.embed_tokens.",
    r"^model\.transformer\.ln_f\.": "model.norm.",
    r"^model\.transformer\.ff_out\.": "lm_head.",
    r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.": r"model.layers.\1.input_layernorm.",
    r"^model\.transformer\.blocks\.(\d+)\.q_proj\.": r"model.layers.\1.self_attn.q_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.k_proj\.": r"model.layers.\1.self_attn.k_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.v_proj\.": r"model.layers.\1.self_attn.v_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.attn_out\.": r"model.layers.\1.self_attn.o_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.": r"model.layers.\1.post_attention_layernorm.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.": r"model.layers.\1.mlp.gate_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.up_proj\.": r"model.layers.\1.mlp.up_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_out\.": r"model.layers.\1.mlp.down_proj.",
}
register_checkpoint_conversion_mapping(
    "llada", [WeightRenaming(source, target) for source, target in OFFICIAL_KEY_MAPPING.items()], overwrite=True
)


class LLaDARotaryEmbedding(nn.Module):
    """fp32 RoPE tables built once on the CPU, as the official LLaDA-8B code does (CUDA-built tables differ in ~19% of
    entries, which flips bf16 results); longer inputs regrow them on their device. q/k rotate in fp32, rounded once."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        cos, sin = self.compute_tables(config, config.max_position_embeddings)
        self.cos_cached = nn.Buffer(cos, persistent=False)
        self.sin_cached = nn.Buffer(sin, persistent=False)

    @staticmethod
    def compute_tables(config, length: int, device: torch.device | str = "cpu"):
        positions = torch.arange(length, device=device, dtype=torch.float)
        freqs = torch.outer(positions, inverse_frequencies(config, device))
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()

    def reset(self, config) -> None:
        """Rebuild the non-persistent tables (not in checkpoints), on the CPU like the official code."""
        cos, sin = self.compute_tables(config, config.max_position_embeddings)
        init.copy_(self.cos_cached, cos)
        init.copy_(self.sin_cached, sin)

    def ensure_length(self, length: int) -> None:
        """Grow the tables to `length` positions; also rebuilds tables that `model.to(dtype)` cast out of fp32."""
        if self.cos_cached.dtype != torch.float32:
            cos, sin = self.compute_tables(self.config, self.cos_cached.shape[0])
            self.cos_cached, self.sin_cached = cos.to(self.cos_cached.device), sin.to(self.sin_cached.device)
        if length > self.cos_cached.shape[0]:
            self.cos_cached, self.sin_cached = self.compute_tables(self.config, length, self.cos_cached.device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 (cos, sin) of shape (batch, seq, head_dim) for integer positions within the tables."""
        device = position_ids.device
        return self.cos_cached.to(device)[position_ids], self.sin_cached.to(device)[position_ids]


class LLaDAPreTrainedModel(LLaDAFamilyPreTrainedModel):
    config: LLaDAConfig
    _can_compile_fullgraph = True


class LLaDAModel(LLaDAPreTrainedModel, LLaDAFamilyModel):
    rotary_class = LLaDARotaryEmbedding

    def attention_options(self, config: LLaDAConfig) -> dict:
        return {"qkv_bias": config.attention_bias, "out_bias": config.attention_bias}


class LLaDAModelLM(LLaDAPreTrainedModel, LLaDAFamilyModelLM, DiffusionGenerationMixin):
    """LLaDA with its untied LM head, and the masked-diffusion sampler as `generate()`. `labels` with `p_mask`: the
    masked-diffusion ELBO term (`masked_diffusion_loss`); `labels` without `p_mask` raises."""

    body_class = LLaDAModel
    generation_config_class = LLaDAGenerationConfig


__all__ = ["LLaDAModel", "LLaDAModelLM", "LLaDAPreTrainedModel", "OFFICIAL_KEY_MAPPING"]
