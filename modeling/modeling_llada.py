"""LLaDA: a Llama-shaped transformer with bidirectional attention, for masked diffusion.

The delta from `transformers`' Llama: attention is never causal (`is_causal = False`, masks come from
`create_bidirectional_mask`), RoPE tables are built once in fp32 on the CPU and q/k are rotated in fp32 (as the
official code does, so bf16 results match it bit for bit), the embedding has no padding index (EOS = PAD is a training
target), and `generate()` is the diffusion sampler of `DiffusionGenerationMixin`.

Official checkpoints (`model.transformer.blocks.{i}.q_proj`, ...) load unchanged: a checkpoint conversion mapping for
`model_type="llada"` renames their keys to the Llama-style names used here at load time.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_llada import LLaDAConfig
from .generation_llada import DiffusionGenerationMixin, LLaDAGenerationConfig

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


class LLaDARMSNorm(nn.Module):
    """RMSNorm in fp32, cast back, then scaled by the weight (the official order)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class LLaDARotaryEmbedding(nn.Module):
    """fp32 RoPE tables for `max_position_embeddings` positions, built on the CPU.

    The official model builds its sin/cos tables once on the CPU and copies them to the GPU; CUDA-built tables differ
    in ~19% of entries, which flips bf16 results. Longer inputs get a table built on the fly on the input's device,
    like the official regrow rule.
    """

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        cos, sin = self.compute_tables(config, config.max_position_embeddings)
        self.cos_cached = nn.Buffer(cos, persistent=False)
        self.sin_cached = nn.Buffer(sin, persistent=False)

    @staticmethod
    def compute_tables(config: LLaDAConfig, length: int, device: torch.device | str = "cpu"):
        dim = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float) / dim))
        positions = torch.arange(length, device=device, dtype=torch.float)
        freqs = torch.outer(positions, inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()

    def ensure_length(self, length: int) -> None:
        """Grow the tables to `length` positions if needed: built on the tables' device, kept for later calls
        (the official regrow rule). Also rebuilds tables that `model.to(dtype)` cast out of fp32."""
        if self.cos_cached.dtype != torch.float32:
            cos, sin = self.compute_tables(self.config, self.cos_cached.shape[0])
            self.cos_cached, self.sin_cached = cos.to(self.cos_cached.device), sin.to(self.sin_cached.device)
        if length > self.cos_cached.shape[0]:
            self.cos_cached, self.sin_cached = self.compute_tables(self.config, length, self.cos_cached.device)

    @torch.no_grad()
    def forward(self, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 (cos, sin) of shape (batch, seq, head_dim) for integer positions (batch, seq) within the tables."""
        device = position_ids.device
        return self.cos_cached.to(device)[position_ids], self.sin_cached.to(device)[position_ids]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q and k (batch, heads, seq, head_dim) in fp32 and round once to their dtype (`rope_full_precision`)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q_fp32, k_fp32 = q.float(), k.float()
    q_embed = q_fp32 * cos + rotate_half(q_fp32) * sin
    k_embed = k_fp32 * cos + rotate_half(k_fp32) * sin
    return q_embed.to(q.dtype), k_embed.to(k.dtype)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LLaDAAttention(nn.Module):
    """Bidirectional multi-head attention: every position sees every (non-padding) key."""

    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False  # read by the sdpa/flash integrations: without it sdpa turns causal when unpadded
        kv_size = config.num_key_value_heads * self.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, *position_embeddings)
        if past_key_values is not None:  # generation's prefix/dual KV cache: keys of all canvas columns
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class LLaDAMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); official names ff_proj (gate), up_proj, ff_out (down)."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDADecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LLaDAAttention(config=config, layer_idx=layer_idx)
        self.mlp = LLaDAMLP(config)
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class MissingWeightsCheck:
    """`from_pretrained` refuses a checkpoint that lacks a weight of the model (transformers would initialise it
    randomly and only log a report). Tied weights and non-persistent buffers (rotary tables) are not missing."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, allow_missing_weights: bool = False, **kwargs
    ):
        """`allow_missing_weights=True` keeps transformers' behaviour (missing weights randomly initialised), e.g. to
        train a part the checkpoint does not have; `output_loading_info=True` still returns the report."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        missing = sorted(info["missing_keys"])
        if missing and not allow_missing_weights:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise ValueError(
                f"The checkpoint {str(pretrained_model_name_or_path)!r} has no weights for {shown}: they would be "
                "randomly initialised. Pass allow_missing_weights=True to from_pretrained to accept that."
            )
        return (model, info) if want_info else model


class LLaDAPreTrainedModel(MissingWeightsCheck, PreTrainedModel):
    config: LLaDAConfig
    config_class = LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDADecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": LLaDADecoderLayer, "attentions": LLaDAAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LLaDARotaryEmbedding):
            # Non-persistent buffers are not in checkpoints: rebuild them, on the CPU like the official code.
            cos, sin = module.compute_tables(self.config, self.config.max_position_embeddings)
            init.copy_(module.cos_cached, cos)
            init.copy_(module.sin_cached, sin)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """Save with the native (Llama-style) key names; `llada_hf.export` writes the official or remote-code layout.

        A loaded official config carries an `auto_map` to remote-code files this save does not write: drop it.
        """
        auto_map = self.config.__dict__.pop("auto_map", None)
        try:
            return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)
        finally:
            if auto_map is not None:
                self.config.auto_map = auto_map


class LLaDAModel(LLaDAPreTrainedModel):
    """The transformer body: embeddings, bidirectional layers, final norm."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LLaDADecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LLaDARotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """`past_key_values` (a `DiffusionKVCache` from generation) lets the inputs be a slice of the canvas at
        `position_ids`, attending to cached keys of every column; `attention_mask` then covers the whole canvas."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            # Checked where it costs no device sync (CPU); generate() and the likelihood check once up front.
            vocab = self.config.vocab_size
            if _host_checkable(input_ids) and (input_ids.min() < 0 or input_ids.max() >= vocab):
                raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab}).")
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            # Absolute columns, no correction for left padding: RoPE is relative and padding keys are masked out.
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
            needed = inputs_embeds.shape[1]
        else:  # explicit positions: callers on accelerators make sure the tables cover them (generate() does)
            needed = int(position_ids.max()) + 1 if _host_checkable(position_ids) else 0
        if not torch.compiler.is_compiling():
            self.rotary_emb.ensure_length(needed)

        if (
            attention_mask is not None
            and attention_mask.dim() == 2
            and attention_mask.shape[1] != inputs_embeds.shape[1]
        ):
            # Queries are a slice of the canvas (cached generation): mask padding keys of the whole canvas.
            keep = attention_mask.bool()[:, None, None, :].expand(-1, 1, inputs_embeds.shape[1], -1)
            mask = torch.zeros(keep.shape, dtype=inputs_embeds.dtype, device=inputs_embeds.device)
            mask = mask.masked_fill(~keep.to(mask.device), torch.finfo(inputs_embeds.dtype).min)
        else:
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
            )
        position_embeddings = self.rotary_emb(position_ids)
        hidden_states = inputs_embeds
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=mask,
                past_key_values=past_key_values,
                **kwargs,
            )
        return BaseModelOutput(last_hidden_state=self.norm(hidden_states))


class LLaDAModelLM(LLaDAPreTrainedModel, DiffusionGenerationMixin):
    """LLaDA with its (untied) LM head: logits for every position, and the masked-diffusion sampler as `generate()`.

    With `labels` (ids at masked positions, -100 elsewhere) and `p_mask` (masking probability per row or token) the
    loss is the masked-diffusion ELBO term sum(CE / p_mask) / labels.numel() (`masked_diffusion_loss`); `labels`
    without `p_mask` raises (it is not a diffusion loss). Training code in `llada_hf.training` builds these inputs.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    generation_config_class = LLaDAGenerationConfig
    accepts_loss_kwargs = False  # the loss normalises itself; the Trainer must still divide by grad accumulation

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def __call__(self, *args, **kwargs):
        refuse_next_token_loss(kwargs)  # before trl's fused head or any patched forward
        return super().__call__(*args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        p_mask: torch.Tensor | None = None,
        logits_to_keep: slice | torch.Tensor | None = None,
        past_key_values=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        """`logits_to_keep` (a slice or an index tensor of positions) runs the 126k-column head only where logits are
        needed (the sampler's current block); `past_key_values` is generation's prefix/dual KV cache."""
        outputs: BaseModelOutput = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep is not None:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = masked_diffusion_loss(logits, labels, p_mask)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        """Pass-through, so peft's `CAUSAL_LM` wrapper can be built around this model."""
        return {"input_ids": input_ids, **kwargs}


def _host_checkable(tensor: torch.Tensor) -> bool:
    """Whether a value check on `tensor` is free: on the CPU, outside compilation, non-empty."""
    return tensor.device.type == "cpu" and tensor.numel() > 0 and not torch.compiler.is_compiling()


def check_token_reweighting(gamma: float, alpha: float) -> None:
    """Refuse reweighting settings that would silently give a wrong loss (nan, inf, negative exponent or scale)."""
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"reweight_gamma must be a finite number >= 0 (0: no reweighting), got {gamma!r}.")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"reweight_alpha must be a finite number > 0, got {alpha!r}.")


NEXT_TOKEN_LOSS_ERROR = (
    "LLaDA is a masked-diffusion model: next-token (causal) SFT trains the wrong objective ({why}). Fine-tune with "
    "`llada_hf.training.DiffusionSFTTrainer` (a trl.SFTTrainer for this objective) or `llada-hf train` / "
    "`DiffusionTrainer`; for a custom loop: labels without p_mask are refused, use `pretraining_loss` / `sft_loss`."
)


def refuse_next_token_loss(kwargs: dict) -> None:
    """Refuse the calls a next-token trainer makes (trl.SFTTrainer's fused LM head, a Trainer's labels without p_mask):
    they bypass `forward`'s own check, so the LM classes run this in `__call__`, before any hook or patched forward."""
    if kwargs.get("fused_lm_head"):
        raise ValueError(NEXT_TOKEN_LOSS_ERROR.format(why="a fused next-token LM head, e.g. trl.SFTTrainer's"))
    if kwargs.get("labels") is not None and kwargs.get("p_mask") is None:
        raise ValueError(NEXT_TOKEN_LOSS_ERROR.format(why="labels without p_mask"))


def masked_diffusion_loss(
    logits: torch.Tensor,
    labels: torch.LongTensor,
    p_mask: torch.Tensor | None = None,
    normalizer: torch.Tensor | None = None,
    *,
    reweight_gamma: float = 0.0,
    reweight_alpha: float = 1.0,
) -> torch.Tensor:
    """The masked-diffusion loss: (1/b) sum_i (1/n_i) sum_{j: label != -100} CE(logits_ij, label_ij) / p_ij, in fp32.

    The one implementation of the objective: the models' `labels=`/`p_mask=` loss, `llada_hf.training` (pre-training
    and SFT) and `llada_hf.likelihood` (`normalizer` = 1: the ELBO's sum) all call it. `p_mask` broadcasts against
    `labels` ((b, 1) per row or (b, l) per token). `normalizer` (b,) holds n_i: the answer length for SFT; by default
    the row length l, which is the paper's pre-training normalisation by b * l. Unshifted: position j predicts token j.

    `p_mask` is required: without the 1/p_mask weights the sum is not the diffusion ELBO, and the autoregressive habit
    `model(input_ids, labels=input_ids)` (no masking, unshifted CE) would train the model to copy its input.

    Token-level reweighting (Ye et al. 2025, "Beyond Autoregression", arXiv:2410.14157): with `reweight_gamma` > 0
    each token's CE u is replaced by alpha (1 - exp(-u))^gamma u, the focal form of their adaptive weight, which
    shifts the gradient toward tokens the model still gets wrong (1 - exp(-u) is one minus the probability of the
    right token). The weight is not detached (as in a focal loss). gamma = 0, alpha = 1 is the plain ELBO term; the
    paper's code defaults to alpha 0.25, gamma 2. Training only: a reweighted sum is no longer a likelihood bound.
    """
    check_token_reweighting(reweight_gamma, reweight_alpha)
    if p_mask is None:
        raise ValueError(
            "labels without p_mask: a masked-diffusion loss needs the noised input_ids, labels at the masked "
            "positions (-100 elsewhere) and p_mask (each row's masking probability). "
            "`model(input_ids, labels=input_ids)` (the autoregressive habit) would train the model to copy its "
            "input. Use "
            "`llada_hf.training.pretraining_loss(model, input_ids)` / `sft_loss(...)`, or `forward_process` to noise "
            "the batch and pass `labels=` and `p_mask=` from it."
        )
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels.to(logits.device), reduction="none")
    if reweight_gamma != 0.0 or reweight_alpha != 1.0:
        token_loss = reweight_alpha * (1 - torch.exp(-token_loss)).pow(reweight_gamma) * token_loss
    weight = (labels != -100).to(token_loss.device) / p_mask.to(token_loss.device).float()
    per_row = (token_loss * weight).sum(-1)
    b, length = labels.shape
    if normalizer is None:
        return per_row.sum() / (b * length)
    return (per_row / normalizer.to(per_row).clamp(min=1)).sum() / b


__all__ = [
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAPreTrainedModel",
    "MissingWeightsCheck",
    "OFFICIAL_KEY_MAPPING",
    "masked_diffusion_loss",
    "refuse_next_token_loss",
]
