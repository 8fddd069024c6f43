"""LLaDA configuration.

Reads the official GSAI-ML `config.json` unchanged: its OLMo-style keys (`d_model`, `n_heads`, `n_layers`, ...) are
aliases of the standard transformers names through `attribute_map`. The OLMo switches the official code supports but
the released checkpoints never use (ALiBi, LayerNorm, biases, q/k norm, ...) are checked and rejected, so a config this
class accepts is one the model computes exactly.
"""

from transformers.configuration_utils import PreTrainedConfig

# Switches of the official (OLMo-derived) config that change the computation, with the only value this
# implementation supports. Missing keys are fine; a different value is an error, never silently ignored.
_SUPPORTED_OLMO_SWITCHES = {
    "block_type": ("llama",),
    "rope": (True,),
    "alibi": (False,),
    "layer_norm_type": ("rms",),
    "layer_norm_with_affine": (True,),
    "bias_for_layer_norm": (False, None),
    "attention_layer_norm": (False,),
    "include_bias": (False,),
    "include_qkv_bias": (False, None),
    "activation_type": ("silu", "swiglu"),
    "block_group_size": (1,),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
    "rope_full_precision": (True,),
}


# Shape fields every family has, with their smallest valid value: a given value must be an int in range (a string
# "4" from a hand-edited config.json would otherwise fail later as an unrelated `%` between int and str).
_LLADA_INT_FIELDS = {
    "vocab_size": 1,
    "hidden_size": 1,
    "intermediate_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "max_position_embeddings": 1,
    "embedding_size": 1,
}
# Keys a checkpoint's config.json must give (the class defaults are LLaDA-8B's: a missing `d_model` would build a
# 4096-wide model and report a size mismatch for every tensor instead of naming the key).
_LLADA_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _key_names(name: str, aliases: dict[str, str]) -> str:
    """`name`, with the official alias the config.json may use instead (`d_model` for `hidden_size`)."""
    official = [alias for alias, standard in aliases.items() if standard == name]
    return f"`{official[0]}` (`{name}`)" if official else f"`{name}`"


def check_int_fields(config, fields: dict[str, int], aliases: dict[str, str]) -> None:
    """Every integer field that is set is an int >= its minimum; the error names the key (and its official alias)."""
    owner = type(config).__name__
    for name, low in fields.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{owner}: {_key_names(name, aliases)} must be an integer >= {low}, got {value!r} "
                f"({type(value).__name__})."
            )
        if value < low:
            raise ValueError(f"{owner}: {_key_names(name, aliases)} must be an integer >= {low}, got {value!r}.")


def check_required_keys(cls, config_dict: dict, kwargs: dict, required: tuple[str, ...]) -> None:
    """A dict that names its `architectures` is a checkpoint's config.json: it must give every shape key (a bare dict,
    e.g. `from_dict({"hidden_size": 64})`, keeps the class defaults for what it leaves out)."""
    if not config_dict.get("architectures"):
        return
    aliases = cls.attribute_map
    given = set(config_dict) | set(kwargs)
    missing = [
        name
        for name in required
        if name not in given and not any(alias in given for alias, std in aliases.items() if std == name)
    ]
    if missing:
        names = ", ".join(_key_names(name, aliases) for name in missing)
        raise ValueError(
            f"{cls.__name__}: the checkpoint config (architectures {config_dict['architectures']}) is missing "
            f"{names}; a checkpoint's config.json must give every shape key ({', '.join(required)}): the class "
            "defaults would not match its weights."
        )


class LLaDAConfig(PreTrainedConfig):
    r"""Configuration of a LLaDA masked-diffusion transformer (defaults: LLaDA-8B).

    A Llama-style block (RMSNorm, RoPE, SwiGLU, separate q/k/v) with bidirectional attention and an untied head.
    `mask_token_id` is part of the model config because losses and likelihoods need it, not only generation.

    ```python
    >>> from llada_hf import LLaDAConfig, LLaDAModelLM
    >>> config = LLaDAConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    >>> model = LLaDAModelLM(config)
    ```
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "d_model": "hidden_size",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "n_layers": "num_hidden_layers",
        "mlp_hidden_size": "intermediate_size",
        "max_sequence_length": "max_position_embeddings",
        "weight_tying": "tie_word_embeddings",
    }
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    # Other models whose config.json also says model_type "llada" (LLaDA-MoE): (config class, `architectures` names,
    # keys only they have). Their config modules add themselves; `from_dict` builds the matching class.
    family_members = []

    vocab_size: int = 126464
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    embedding_size: int | None = None
    mask_token_id: int | None = 126336
    pad_token_id: int | None = 126081
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 126081
    tie_word_embeddings: bool = False
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        # Official keys first (`n_heads=4` arrives in kwargs): the defaults derived below must see their values.
        for alias, standard in self.attribute_map.items():
            if alias in kwargs:
                setattr(self, standard, kwargs.pop(alias))
        check_int_fields(self, _LLADA_INT_FIELDS, self.attribute_map)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        for key, allowed in _SUPPORTED_OLMO_SWITCHES.items():
            if key in kwargs and kwargs[key] not in allowed:
                raise ValueError(f"LLaDAConfig: `{key}={kwargs[key]!r}` is not supported (supported: {allowed}).")
        if kwargs.get("multi_query_attention"):
            raise ValueError("LLaDAConfig: `multi_query_attention` is not supported; set `n_kv_heads` instead.")
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Build the config; a LLaDA-MoE config dict (same model_type) is built by its own class instead."""
        if cls is LLaDAConfig:
            architectures = set(config_dict.get("architectures") or ())
            for member_class, member_architectures, member_keys in cls.family_members:
                if architectures & set(member_architectures) or (
                    not architectures and any(key in config_dict for key in member_keys)
                ):
                    return member_class.from_dict(config_dict, **kwargs)
        check_required_keys(cls, config_dict, kwargs, _LLADA_REQUIRED_KEYS)
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self):
        """Shape checks with errors that name the offending fields."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if (self.hidden_size // self.num_attention_heads) % 2 != 0:
            raise ValueError(f"head_dim ({self.hidden_size // self.num_attention_heads}) must be even for RoPE.")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        if self.embedding_size != self.vocab_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) != vocab_size ({self.vocab_size}) is not supported: "
                "the released checkpoints use equal sizes."
            )
        outside = [
            f"{name} ({token_id})"
            for name in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
            for token_id in _ids(getattr(self, name, None))
            if not 0 <= token_id < self.vocab_size
        ]
        if outside:
            raise ValueError(
                f"{', '.join(outside)} outside the vocabulary [0, {self.vocab_size}). The defaults are LLaDA-8B's ids "
                "(mask 126336, eos/pad 126081): a smaller vocabulary needs its own mask_token_id, eos_token_id, "
                "pad_token_id and bos_token_id (or None)."
            )
        if self.mask_token_id is not None and self.mask_token_id == self.pad_token_id:
            raise ValueError(f"pad_token_id must differ from mask_token_id ({self.mask_token_id}).")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (LLaDA uses 'silu').")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return self.head_dim


def _ids(value) -> list[int]:
    """A special-id field (None, an id or a list of ids) as a list."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


__all__ = ["LLaDAConfig"]
