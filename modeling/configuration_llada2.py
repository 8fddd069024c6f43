"""LLaDA2.0 configuration (model_type `llada2_moe`: LLaDA2.0-mini, -flash); reads the official `config.json`
unchanged and rejects the official switches this implementation does not compute."""

from .configuration_llada import LLaDAFamilyConfig, tp_plan


class LLaDA2MoeConfig(LLaDAFamilyConfig):
    r"""Configuration of a LLaDA2.0 mixture-of-experts masked-diffusion transformer (defaults: LLaDA2.0-mini).

    The first `first_k_dense_replace` layers have a dense SwiGLU MLP of `intermediate_size`; the others route each
    token to `num_experts_per_tok` of `num_experts` experts of `moe_intermediate_size` (`n_group`/`topk_group`
    group-limited sigmoid routing, weights times `routed_scaling_factor`) plus `num_shared_experts` always-on experts.
    `mask_token_id` / `eos_token_id` are not in the official file (its sampler takes them as arguments): the defaults
    are the official sampler's (156895 / 156892).

    ```python
    >>> from llada_hf import LLaDA2MoeConfig, LLaDA2MoeModelLM
    >>> config = LLaDA2MoeConfig(vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, n_group=4,
    ...     topk_group=2, moe_intermediate_size=32, mask_token_id=1000, pad_token_id=1001, eos_token_id=1001)
    >>> model = LLaDA2MoeModelLM(config)
    ```
    """

    model_type = "llada2_moe"
    base_model_tp_plan = tp_plan(["qkv"], "mlp", "mlp.experts.*", "mlp.shared_experts")
    supported_switches = {
        "score_function": ("sigmoid",), "use_rmsnorm": (True,), "norm_head": (False,), "use_sliding_window": (False,),
        "using_split_qkv_in_self_attention": (False,), "router_dtype": ("fp32", None), "hidden_act": ("silu",),
    }  # fmt: skip
    int_fields = {
        "intermediate_size": 1, "head_dim": 1, "num_experts": 1, "num_experts_per_tok": 1, "num_shared_experts": 0,
        "moe_intermediate_size": 1, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 0, "rotary_dim": 1,
    }  # fmt: skip
    required_keys = ("intermediate_size", "num_experts", "moe_intermediate_size")

    intermediate_size: int = 5120
    num_hidden_layers: int = 20
    num_key_value_heads: int | None = 4
    head_dim: int | None = 128
    max_position_embeddings: int = 32768
    rope_theta: float = 600000.0
    partial_rotary_factor: float = 0.5
    rotary_dim: int | None = None
    use_qkv_bias: bool = False
    use_bias: bool = False
    use_qk_norm: bool = True
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
    pad_token_id: int | None = 156892
    eos_token_id: int | list[int] | None = 156892

    def derive_defaults(self, kwargs: dict) -> None:
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

    def validate_architecture(self) -> None:
        super().validate_architecture()
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

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers from `first_k_dense_replace` on are mixture-of-experts layers; the ones before are dense."""
        return layer_idx >= self.first_k_dense_replace


__all__ = ["LLaDA2MoeConfig"]
