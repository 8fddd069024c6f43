"""LLaDA-8B and LLaDA-MoE configurations, and the checks every family's config shares (`LLaDAFamilyConfig`).

Both read their official `config.json` unchanged and say `model_type: "llada"`: `LLaDAConfig.from_dict` builds a
`LLaDAMoEConfig` when the dict's `architectures` name a LLaDA-MoE class or, without `architectures`, when it has
LLaDA-MoE-only keys (`LLADA_MOE_ARCHITECTURES`, `LLADA_MOE_KEYS`). Official switches this implementation does not
compute are rejected, so an accepted config is one the model computes as the official code does.
"""

from transformers.configuration_utils import PreTrainedConfig

LLADA_MOE_ARCHITECTURES = ("LLaDAMoEModelLM", "LLaDAMoEModel")
LLADA_MOE_KEYS = ("moe_layer_freq", "expert_intermediate_size", "moe_router_score_function")  # none is an 8B key
# Integer fields every family has (each set one must be an int >= 1) and shape keys a checkpoint must give.
_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "max_position_embeddings")  # fmt: skip
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def tp_plan(in_projections: str, *mlps: str) -> dict[str, str]:
    """Tensor-parallel plan: the attention's input projections (`"qkv"` or `"q", "k", "v"`), `o_proj`, and the
    SwiGLU MLPs under these module prefixes."""
    plan = {f"layers.*.self_attn.{name}_proj": "colwise" for name in in_projections} | {
        "layers.*.self_attn.o_proj": "rowwise"
    }
    styles = {"gate_proj": "colwise", "up_proj": "colwise", "down_proj": "rowwise"}
    return plan | {f"layers.*.{prefix}.{name}": style for prefix in mlps for name, style in styles.items()}


def _key_names(name: str, aliases: dict[str, str]) -> str:
    """`name`, with the official alias the config.json may use instead (`d_model` for `hidden_size`)."""
    official = [alias for alias, standard in aliases.items() if standard == name]
    return f"`{official[0]}` (`{name}`)" if official else f"`{name}`"


class LLaDAFamilyConfig(PreTrainedConfig):
    """The checks of every family config: `supported_switches` (official switches with the only values supported),
    `int_fields` (besides the shared ones: each set one an int >= its minimum), `required_keys` (besides the shared
    ones: shape keys a checkpoint's config.json must give), then `derive_defaults` and `validate_architecture`.
    Errors name the field and its official alias."""

    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }
    supported_switches = {"hidden_act": ("silu",)}
    int_fields = {}
    required_keys = ()

    # Fields with the same meaning in every family; these defaults are LLaDA2.0-mini's / LLaDA-MoE's.
    vocab_size: int = 157184
    hidden_size: int = 2048
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    mask_token_id: int | None = 156895
    bos_token_id: int | None = None
    tie_word_embeddings: bool = False
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        # Official keys first (`n_heads=4` arrives in kwargs): the defaults derived below must see their values.
        for alias, standard in self.attribute_map.items():
            if alias in kwargs:
                setattr(self, standard, kwargs.pop(alias))
        owner = type(self).__name__
        if kwargs.pop("rope_scaling", None) is not None:
            raise ValueError(f"{owner}: `rope_scaling` is not supported (the released models use none).")
        for key, allowed in self.supported_switches.items():
            value = kwargs[key] if key in kwargs else getattr(self, key, allowed[0])
            if value not in allowed:
                raise ValueError(f"{owner}: `{key}={value!r}` is not supported (supported: {allowed}).")
        for name, low in {**dict.fromkeys(_INT_FIELDS, 1), **self.int_fields}.items():
            value = getattr(self, name, None)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                kind = f" ({type(value).__name__})" if not isinstance(value, int) or isinstance(value, bool) else ""
                error = ValueError if kind == "" else TypeError
                names = _key_names(name, self.attribute_map)
                raise error(f"{owner}: {names} must be an integer >= {low}, got {value!r}{kind}.")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.derive_defaults(kwargs)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def derive_defaults(self, kwargs: dict) -> None:
        """Fill the fields whose defaults derive from others (a family's delta)."""

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Build the config. A dict that names its `architectures` is a checkpoint's config.json: it must give every
        shape key (a bare dict, e.g. `from_dict({"hidden_size": 64})`, keeps the class defaults for the others)."""
        if config_dict.get("architectures"):
            aliases, given = cls.attribute_map, set(config_dict) | set(kwargs)
            required = _REQUIRED_KEYS + cls.required_keys
            missing = [
                _key_names(name, aliases)
                for name in required
                if name not in given and not any(alias in given for alias, std in aliases.items() if std == name)
            ]
            if missing:
                raise ValueError(
                    f"{cls.__name__}: the checkpoint config (architectures {config_dict['architectures']}) is missing "
                    f"{', '.join(missing)}; a checkpoint's config.json must give every shape key "
                    f"({', '.join(required)}): the class defaults would not match its weights."
                )
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self) -> None:
        """Shape checks with errors that name the offending fields."""
        pairs = [("num_attention_heads", "num_key_value_heads")]
        if "head_dim" not in self.int_fields:  # head_dim derives from hidden_size
            pairs.insert(0, ("hidden_size", "num_attention_heads"))
        for a, b in pairs:
            if getattr(self, a) % getattr(self, b) != 0:
                raise ValueError(f"{a} ({getattr(self, a)}) must be divisible by {b} ({getattr(self, b)}).")
        if self.rotary_dim % 2 != 0 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and in (0, head_dim={self.head_dim}].")
        special = {
            name: getattr(self, name) for name in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
        }
        outside = [
            f"{name} ({token_id})"
            for name, value in special.items()
            for token_id in (value if isinstance(value, (list, tuple)) else [value])
            if token_id is not None and not 0 <= token_id < self.vocab_size
        ]
        if outside:
            raise ValueError(
                f"{', '.join(outside)} outside the vocabulary [0, {self.vocab_size}). The defaults are the published "
                "model's ids: a smaller vocabulary needs its own mask_token_id, eos_token_id, pad_token_id and "
                "bos_token_id (or None)."
            )
        if self.mask_token_id is not None and self.mask_token_id == self.pad_token_id:
            raise ValueError(f"pad_token_id must differ from mask_token_id ({self.mask_token_id}).")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * getattr(self, "partial_rotary_factor", 1.0))


class LLaDAConfig(LLaDAFamilyConfig):
    r"""Configuration of a LLaDA masked-diffusion transformer (defaults: LLaDA-8B): a Llama-style block with
    bidirectional attention and an untied head. The official OLMo-style keys (`d_model`, `n_heads`, ...) are aliases
    (`attribute_map`); the OLMo switches the released checkpoints never use (ALiBi, biases, ...) are rejected.

    ```python
    >>> from llada_hf import LLaDAConfig, LLaDAModelLM
    >>> model = LLaDAModelLM(LLaDAConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, n_heads=4))
    ```
    """

    model_type = "llada"
    attribute_map = {
        "d_model": "hidden_size",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "n_layers": "num_hidden_layers",
        "mlp_hidden_size": "intermediate_size",
        "max_sequence_length": "max_position_embeddings",
        "weight_tying": "tie_word_embeddings",
    }
    base_model_tp_plan = tp_plan("qkv", "mlp")
    supported_switches = {
        "hidden_act": ("silu",), "block_type": ("llama",), "rope": (True,), "alibi": (False,),
        "layer_norm_type": ("rms",), "layer_norm_with_affine": (True,), "bias_for_layer_norm": (False, None),
        "attention_layer_norm": (False,), "include_bias": (False,), "include_qkv_bias": (False, None),
        "activation_type": ("silu", "swiglu"), "block_group_size": (1,), "input_emb_norm": (False,),
        "scale_logits": (False,), "rope_full_precision": (True,), "multi_query_attention": (False, None),
    }  # fmt: skip
    int_fields = {"intermediate_size": 1, "embedding_size": 1}
    required_keys = ("intermediate_size",)

    vocab_size: int = 126464
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    attention_bias: bool = False
    embedding_size: int | None = None
    mask_token_id: int | None = 126336
    pad_token_id: int | None = 126081
    eos_token_id: int | list[int] | None = 126081

    def derive_defaults(self, kwargs: dict) -> None:
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Build the config; a LLaDA-MoE config dict (same model_type) is built by `LLaDAMoEConfig` instead."""
        architectures = set(config_dict.get("architectures") or ())
        if cls is LLaDAConfig and (
            architectures & set(LLADA_MOE_ARCHITECTURES)
            or (not architectures and any(key in config_dict for key in LLADA_MOE_KEYS))
        ):
            return LLaDAMoEConfig.from_dict(config_dict, **kwargs)
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.embedding_size != self.vocab_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) != vocab_size ({self.vocab_size}) is not supported: "
                "the released checkpoints use equal sizes."
            )


class LLaDAMoEConfig(LLaDAFamilyConfig):
    r"""Configuration of a LLaDA-MoE masked-diffusion transformer (OLMoE-shaped; `architectures` ["LLaDAMoEModelLM"]).

    Layer i is a mixture-of-experts layer when `moe_layer_freq[i]` is 1 (an int applies to every layer), else a dense
    SwiGLU layer of `dense_intermediate_size`; experts of `expert_intermediate_size` (softmax router, `expert_bias`
    added to the probabilities, top-k), plus a shared expert of `shared_expert_intermediate_size` when set.
    `routed_scaling_factor`, `router_num_group` and `router_topk_group` are read but, as officially, unused. The
    defaults are not a published model (the 7B `config.json` was not available).
    """

    model_type = "llada"
    base_model_tp_plan = tp_plan("qkv", "mlp", "mlp.experts.*", "shared_expert")
    supported_switches = {"moe_router_score_function": ("softmax",), "clip_qkv": (None,), "hidden_act": ("silu",)}
    int_fields = dict.fromkeys(
        ("dense_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size", "num_experts",
         "num_experts_per_tok"), 1
    )  # fmt: skip
    required_keys = ("num_experts", "expert_intermediate_size")

    dense_intermediate_size: int = 8192
    expert_intermediate_size: int = 1024
    shared_expert_intermediate_size: int | None = None
    num_hidden_layers: int = 16
    rope_theta: float = 50000.0
    partial_rotary_factor: float = 1.0
    attention_bias: bool = False
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
    pad_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def derive_defaults(self, kwargs: dict) -> None:
        if isinstance(self.moe_layer_freq, int):
            self.moe_layer_freq = [self.moe_layer_freq] * self.num_hidden_layers

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if len(self.moe_layer_freq) != self.num_hidden_layers or set(self.moe_layer_freq) - {0, 1}:
            raise ValueError(
                f"moe_layer_freq must be 0/1 per layer ({self.num_hidden_layers} layers), got {self.moe_layer_freq}."
            )
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"num_experts_per_tok ({self.num_experts_per_tok}) must be in [1, {self.num_experts}].")

    def is_moe_layer(self, layer_idx: int) -> bool:
        return bool(self.moe_layer_freq[layer_idx])


__all__ = ["LLaDAConfig", "LLaDAMoEConfig"]
