"""LLaDA-MoE configuration (LLaDA-MoE-7B-A1B; `architectures` ["LLaDAMoEModelLM"]).

Its `config.json` says `model_type: "llada"`, the same string as LLaDA-8B. `AutoConfig` maps "llada" to `LLaDAConfig`,
whose `from_dict` hands a config dict to this class when its `architectures` name a LLaDA-MoE class, or, without
`architectures`, when it has LLaDA-MoE-only keys (`LLaDAConfig.family_members`, filled at the bottom of this file).
"""

from transformers.configuration_utils import PreTrainedConfig

from .configuration_llada import LLaDAConfig, check_int_fields, check_required_keys

# Official switches with the only values this implementation supports (missing keys take the class default).
_INT_FIELDS = {
    "vocab_size": 1,
    "hidden_size": 1,
    "dense_intermediate_size": 1,
    "expert_intermediate_size": 1,
    "shared_expert_intermediate_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "max_position_embeddings": 1,
    "num_experts": 1,
    "num_experts_per_tok": 1,
}
# Shape keys a checkpoint's config.json must give (see `check_required_keys`).
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_experts",
                  "expert_intermediate_size")  # fmt: skip

_SUPPORTED_SWITCHES = {
    "moe_router_score_function": ("softmax",),
    "clip_qkv": (None,),
    "hidden_act": ("silu",),
}


class LLaDAMoEConfig(PreTrainedConfig):
    r"""Configuration of a LLaDA-MoE masked-diffusion transformer (OLMoE-shaped).

    Layer i is a mixture-of-experts layer when `moe_layer_freq[i]` is 1 (an int applies to every layer), else a dense
    SwiGLU layer of `dense_intermediate_size`. MoE layers route each token to `num_experts_per_tok` of `num_experts`
    experts of `expert_intermediate_size` (softmax over all experts, `expert_bias` added to the probabilities, top-k,
    renormalised only if `norm_topk_prob`), plus a shared expert of `shared_expert_intermediate_size` when set.
    Attention: q/k RMSNorm per head (`qk_layernorm`), RoPE on the first `rotary_dim` = head_dim *
    `partial_rotary_factor` dimensions. `routed_scaling_factor`, `router_num_group` and `router_topk_group` are read
    but, as in the official model, unused.

    The defaults are not a published model (the real 7B `config.json` was not available); `mask_token_id` defaults
    to 156895, the mask id of the LLaDA-MoE / LLaDA2.0 tokenizer.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
        "layers.*.mlp.experts.*.gate_proj": "colwise",
        "layers.*.mlp.experts.*.up_proj": "colwise",
        "layers.*.mlp.experts.*.down_proj": "rowwise",
        "layers.*.shared_expert.gate_proj": "colwise",
        "layers.*.shared_expert.up_proj": "colwise",
        "layers.*.shared_expert.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 157184
    hidden_size: int = 2048
    dense_intermediate_size: int = 8192
    expert_intermediate_size: int = 1024
    shared_expert_intermediate_size: int | None = None
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 50000.0
    partial_rotary_factor: float = 1.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    clip_qkv: float | None = None
    qk_layernorm: bool = True
    moe_layer_freq: int | list[int] = 1
    num_experts: int = 64
    num_experts_per_tok: int = 8
    moe_router_enable_expert_bias: bool = True
    moe_router_score_function: str = "softmax"
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    router_num_group: int | None = None
    router_topk_group: int | None = None
    router_aux_loss_coef: float = 0.01
    output_router_logits: bool = False
    mask_token_id: int | None = 156895
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        if kwargs.pop("rope_scaling", None) is not None:
            raise ValueError("LLaDAMoEConfig: `rope_scaling` is not supported.")
        for key, allowed in _SUPPORTED_SWITCHES.items():
            value = kwargs[key] if key in kwargs else getattr(self, key, allowed[0])
            if value not in allowed:
                raise ValueError(f"LLaDAMoEConfig: `{key}={value!r}` is not supported (supported: {allowed}).")
        check_int_fields(self, _INT_FIELDS, self.attribute_map)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if isinstance(self.moe_layer_freq, int):
            self.moe_layer_freq = [self.moe_layer_freq] * self.num_hidden_layers
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Build the config; a checkpoint's dict (one naming its `architectures`) must give every shape key."""
        check_required_keys(cls, config_dict, kwargs, _REQUIRED_KEYS)
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self):
        """Shape checks with errors that name the offending fields."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        if self.rotary_dim % 2 != 0 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and in (0, head_dim={self.head_dim}].")
        if len(self.moe_layer_freq) != self.num_hidden_layers or set(self.moe_layer_freq) - {0, 1}:
            raise ValueError(
                f"moe_layer_freq must be 0/1 per layer ({self.num_hidden_layers} layers), got {self.moe_layer_freq}."
            )
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"num_experts_per_tok ({self.num_experts_per_tok}) must be in [1, {self.num_experts}].")
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id ({self.mask_token_id}) is outside the vocabulary [0, {self.vocab_size}).")
        if self.mask_token_id is not None and self.mask_token_id == self.pad_token_id:
            raise ValueError(f"pad_token_id must differ from mask_token_id ({self.mask_token_id}).")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer_idx: int) -> bool:
        return bool(self.moe_layer_freq[layer_idx])


LLADA_MOE_ARCHITECTURES = ("LLaDAMoEModelLM", "LLaDAMoEModel")
# Keys only a LLaDA-MoE config has (none of them is an official LLaDA-8B key).
LLADA_MOE_KEYS = ("moe_layer_freq", "expert_intermediate_size", "moe_router_score_function")
LLaDAConfig.family_members.append((LLaDAMoEConfig, LLADA_MOE_ARCHITECTURES, LLADA_MOE_KEYS))


__all__ = ["LLaDAMoEConfig"]
