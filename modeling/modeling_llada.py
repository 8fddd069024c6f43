"""LLaDA-8B: the shared body (`modeling_body.py`) with split q/k/v, no q/k norm, full fp32 RoPE and a dense MLP.

RoPE tables are built once in fp32 on the CPU and q/k are rotated in fp32 (as the official code does, so bf16 results
match it bit for bit); the embedding has no padding index (EOS = PAD is a training target); `generate()` is the
diffusion sampler of `DiffusionGenerationMixin`. Official checkpoints (`model.transformer.blocks.{i}.q_proj`, ...)
load unchanged: a conversion mapping for `model_type="llada"` renames their keys to these Llama-style names.
"""

from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from .configuration_llada import LLaDAConfig
from .generation_llada import DiffusionGenerationMixin, LLaDAGenerationConfig
from .modeling_body import (
    LLaDAFamilyModel,
    LLaDAFamilyModelLM,
    LLaDAFamilyPreTrainedModel,
    LLaDARotaryEmbedding,
    masked_diffusion_loss,
    refuse_next_token_loss,
)

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


class LLaDAPreTrainedModel(LLaDAFamilyPreTrainedModel):
    config: LLaDAConfig
    config_class = LLaDAConfig
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


__all__ = [
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAPreTrainedModel",
    "OFFICIAL_KEY_MAPPING",
    "masked_diffusion_loss",
    "refuse_next_token_loss",
]
