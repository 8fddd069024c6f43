"""LLaDA2.0 configuration (model_type `llada2_moe`: LLaDA2.0-mini, LLaDA2.0-flash).

Reads the official `config.json` unchanged: its keys are already transformers-style names. Switches of the official
config that would change the computation in a way this implementation does not reproduce are rejected, so a config
this class accepts is one the model computes as the official code does.
"""

from transformers.configuration_utils import PreTrainedConfig

from .configuration_llada import check_int_fields, check_required_keys

_INT_FIELDS = {
    "vocab_size": 1,
    "hidden_size": 1,
    "intermediate_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 1,
    "max_position_embeddings": 1,
    "num_experts": 1,
    "num_experts_per_tok": 1,
    "num_shared_experts": 0,
    "moe_intermediate_size": 1,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 0,
    "rotary_dim": 1,
}
# Shape keys a checkpoint's config.json must give (see `check_required_keys`).
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_experts", "moe_intermediate_size")  # fmt: skip

# Official switches with the only values this implementation supports (missing keys take the class default).
_SUPPORTED_SWITCHES = {
    "score_function": ("sigmoid",),
    "use_rmsnorm": (True,),
    "norm_head": (False,),
    "use_sliding_window": (False,),
    "using_split_qkv_in_self_attention": (False,),
    "router_dtype": ("fp32", None),
    "hidden_act": ("silu",),
}


class LLaDA2MoeConfig(PreTrainedConfig):
    r"""Configuration of a LLaDA2.0 mixture-of-experts masked-diffusion transformer (defaults: LLaDA2.0-mini).

    The first `first_k_dense_replace` layers have a dense SwiGLU MLP of `intermediate_size`; the others route each
    token to `num_experts_per_tok` of `num_experts` SwiGLU experts of `moe_intermediate_size` (sigmoid scores, the
    expert bias used only to choose, `n_group`/`topk_group` group-limited choice, renormalised top-k weights times
    `routed_scaling_factor`) plus `num_shared_experts` always-on experts. Attention is a fused q/k/v projection with
    grouped-query heads, RMSNorm on q and k per head, and RoPE on the first `rotary_dim` dimensions of each head.

    `mask_token_id` / `eos_token_id` are not in the official file (its sampler takes them as arguments): the defaults
    are the official sampler's (156895 / 156892).

    ```python
    >>> from llada_hf import LLaDA2MoeConfig, LLaDA2MoeModelLM
    >>> config = LLaDA2MoeConfig(vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
    ...     n_group=4, topk_group=2, moe_intermediate_size=32, mask_token_id=1000, pad_token_id=1001)
    >>> model = LLaDA2MoeModelLM(config)
    ```
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.qkv_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
        "layers.*.mlp.experts.*.gate_proj": "colwise",
        "layers.*.mlp.experts.*.up_proj": "colwise",
        "layers.*.mlp.experts.*.down_proj": "rowwise",
        "layers.*.mlp.shared_experts.gate_proj": "colwise",
        "layers.*.mlp.shared_experts.up_proj": "colwise",
        "layers.*.mlp.shared_experts.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int = 5120
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 4
    head_dim: int | None = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 600000.0
    partial_rotary_factor: float = 0.5
    rotary_dim: int | None = None
    use_qkv_bias: bool = False
    use_bias: bool = False
    use_qk_norm: bool = True
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    output_dropout: float = 0.0
    num_experts: int = 256
    num_experts_per_tok: int = 8
    num_shared_experts: int | None = 1
    moe_intermediate_size: int = 512
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    score_function: str = "sigmoid"
    moe_router_enable_expert_bias: bool = True
    norm_topk_prob: bool = True
    router_dtype: str | None = "fp32"
    first_k_dense_replace: int = 1
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.001
    mask_token_id: int | None = 156895
    pad_token_id: int | None = 156892
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 156892
    tie_word_embeddings: bool = False
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        if kwargs.pop("rope_scaling", None) is not None:
            raise ValueError("LLaDA2MoeConfig: `rope_scaling` is not supported (the released models use none).")
        for key, allowed in _SUPPORTED_SWITCHES.items():
            value = kwargs[key] if key in kwargs else getattr(self, key, allowed[0])
            if value not in allowed:
                raise ValueError(f"LLaDA2MoeConfig: `{key}={value!r}` is not supported (supported: {allowed}).")
        check_int_fields(self, _INT_FIELDS, self.attribute_map)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        derived_rotary_dim = int(self.head_dim * self.partial_rotary_factor)
        if self.rotary_dim is None:
            self.rotary_dim = derived_rotary_dim
        elif self.rotary_dim != derived_rotary_dim:
            raise ValueError(
                f"rotary_dim ({self.rotary_dim}) != head_dim * partial_rotary_factor ({derived_rotary_dim})."
            )
        if self.num_shared_experts is None:
            self.num_shared_experts = 0
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Build the config; a checkpoint's dict (one naming its `architectures`) must give every shape key."""
        check_required_keys(cls, config_dict, kwargs, _REQUIRED_KEYS)
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self):
        """Shape checks with errors that name the offending fields."""
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        if self.rotary_dim % 2 != 0 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and in (0, head_dim={self.head_dim}].")
        if self.num_experts % self.n_group != 0:
            raise ValueError(f"num_experts ({self.num_experts}) must be divisible by n_group ({self.n_group}).")
        if not 0 < self.topk_group <= self.n_group:
            raise ValueError(f"topk_group ({self.topk_group}) must be in [1, n_group={self.n_group}].")
        if self.num_experts // self.n_group < 2:
            raise ValueError("Each expert group needs at least 2 experts (groups are scored by their best two).")
        if not 0 < self.num_experts_per_tok <= self.topk_group * (self.num_experts // self.n_group):
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in [1, experts in the kept groups "
                f"({self.topk_group * (self.num_experts // self.n_group)})]."
            )
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id ({self.mask_token_id}) is outside the vocabulary [0, {self.vocab_size}).")
        if self.mask_token_id is not None and self.mask_token_id == self.pad_token_id:
            raise ValueError(f"pad_token_id must differ from mask_token_id ({self.mask_token_id}).")

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers from `first_k_dense_replace` on are mixture-of-experts layers; the ones before are dense."""
        return layer_idx >= self.first_k_dense_replace


__all__ = ["LLaDA2MoeConfig"]
