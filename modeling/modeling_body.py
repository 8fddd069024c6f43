"""The body every LLaDA family shares: a Llama-shaped transformer with bidirectional attention, for masked diffusion.

The family files keep only their deltas (key maps, attention variant, RoPE variant, MLP per layer, routers). The
deltas from `transformers`' Llama: attention is never causal; a 2-D padding mask may cover more keys than there are
queries (cached generation) and a 4-D mask (LLaDA2's block-causal one) is used as given; RoPE may cover only the
first `rotary_dim` dimensions of a head; `masked_diffusion_loss` replaces the next-token loss.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
from transformers.models.llama.modeling_llama import LlamaRMSNorm, eager_attention_forward, rotate_half
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

Tables = tuple[Tensor, Tensor]  # RoPE (cos, sin)


class LLaDARMSNorm(LlamaRMSNorm):
    """transformers' Llama RMSNorm: in fp32, cast back, then scaled by the weight (the official LLaDA order)."""


def inverse_frequencies(config, device: torch.device | str = "cpu") -> torch.Tensor:
    dim = config.rotary_dim
    return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))


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


class LLaDAPartialRotaryEmbedding(nn.Module):
    """RoPE over the first `config.rotary_dim` dimensions of a head, computed in fp32 per call, returned in `x`'s
    dtype (LLaDA2.0, LLaDA-MoE): any length works."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.inv_freq = nn.Buffer(inverse_frequencies(config), persistent=False)

    def reset(self, config) -> None:
        init.copy_(self.inv_freq, inverse_frequencies(config))

    def ensure_length(self, length: int) -> None:
        """Tables are computed per call (the interface the sampler calls)."""

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.dtype != torch.float32:  # `model.to(dtype)` cast the buffer: rebuild it in fp32
            self.inv_freq = inverse_frequencies(self.config).to(self.inv_freq.device)
        inv_freq = self.inv_freq.to(x.device)
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = position_ids[..., None].to(torch.float32) * inv_freq
            angles = torch.cat((freqs, freqs), dim=-1)
            cos, sin = angles.cos(), angles.sin()
        return cos.to(x.dtype), sin.to(x.dtype)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate the first `cos.shape[-1]` dimensions of q and k (batch, heads, seq, head_dim) in the tables' dtype,
    rounded once to q's dtype; the other dimensions pass unchanged."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    dim = cos.shape[-1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rot = x[..., :dim].to(cos.dtype)
        rot = (rot * cos + rotate_half(rot) * sin).to(x.dtype)
        return rot if dim == x.shape[-1] else torch.cat((rot, x[..., dim:]), dim=-1)

    return rotate(q), rotate(k)


def build_attention_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None):
    """The attention bias of a bidirectional body: `None` or all-ones 2-D: full attention; a 2-D padding mask
    (batch, keys), whose keys may outnumber the queries (cached generation: the queries are a slice of the canvas);
    a 4-D mask (batch, 1, queries, keys), boolean (True = attend) or additive, used as given in the model dtype."""
    dtype, device = inputs_embeds.dtype, inputs_embeds.device
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.dtype != torch.bool:
        return attention_mask.to(device=device, dtype=dtype)
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] != inputs_embeds.shape[1]:
        attention_mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, inputs_embeds.shape[1], -1)
    elif attention_mask is None or attention_mask.dim() != 4:
        return create_bidirectional_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=device)
    return bias.masked_fill(~attention_mask.to(device), torch.finfo(dtype).min)


class LLaDAAttention(nn.Module):
    """Bidirectional grouped-query attention: split (`q/k/v_proj`) or fused (`qkv_proj`) projections, optional
    per-head q/k RMSNorm, RoPE from the body's tables."""

    def __init__(self, config, layer_idx: int, *, fused_qkv=False, qk_norm=False, qkv_bias=False, out_bias=False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads, self.num_key_value_heads = config.num_attention_heads, config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False  # read by the sdpa/flash integrations: without it sdpa turns causal when unpadded
        q_size, kv_size = self.num_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        if fused_qkv:
            self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=qkv_bias)
        else:
            self.qkv_proj = None
            self.q_proj = nn.Linear(config.hidden_size, q_size, bias=qkv_bias)
            self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=qkv_bias)
            self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=out_bias)
        self.q_norm = LLaDARMSNorm(self.head_dim, eps=config.rms_norm_eps) if qk_norm else None
        self.k_norm = LLaDARMSNorm(self.head_dim, eps=config.rms_norm_eps) if qk_norm else None

    def forward(
        self, hidden_states: Tensor, position_embeddings: Tables, attention_mask=None, past_key_values=None, **kwargs
    ) -> tuple[Tensor, Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(hidden_states).view(hidden_shape)
            query, key, value = qkv.split([self.num_heads, self.num_key_value_heads, self.num_key_value_heads], dim=-2)
        else:
            query, key, value = (p(hidden_states).view(hidden_shape) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = apply_rotary_pos_emb(query.transpose(1, 2), key.transpose(1, 2), *position_embeddings)
        value = value.transpose(1, 2)
        if past_key_values is not None:  # generation's caches: the keys/values of every canvas column they hold
            key, value = past_key_values.update(key, value, self.layer_idx)

        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        dropout = self.attention_dropout if self.training else 0.0
        attn_output, attn_weights = interface(
            self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, is_causal=False, **kwargs
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class LLaDAMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); the dense layers' MLP, each expert, and the shared expert(s)."""

    def __init__(self, config, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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


def run_experts(experts: nn.ModuleList, hidden_states, top_idx, top_weights) -> torch.Tensor:
    """sum_k weight_k * expert_{idx_k}(x) per token, each expert run once on its tokens, accumulated in fp32."""
    output = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
    hit = torch.zeros(len(experts), dtype=torch.bool, device=top_idx.device)
    hit[top_idx.flatten()] = True
    for expert_idx in hit.nonzero().flatten().tolist():
        token_idx, slot = torch.where(top_idx == expert_idx)
        expert_out = experts[expert_idx](hidden_states[token_idx])
        output.index_add_(0, token_idx, expert_out.float() * top_weights[token_idx, slot, None].float())
    return output.to(hidden_states.dtype)


class LLaDASparseMoeBlock(nn.Module):
    """Router (`gate`), routed SwiGLU experts (`experts.{e}`), optional shared experts. A family gives
    `route(tokens) -> (router_logits, top-k ids, their weights)` and `probabilities(router_logits)` (the router
    probabilities of the auxiliary loss)."""

    def __init__(self, config, gate: nn.Module, expert_size: int, shared_size: int | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.experts = nn.ModuleList([LLaDAMLP(config, expert_size) for _ in range(config.num_experts)])
        self.shared_experts = LLaDAMLP(config, shared_size) if shared_size else None
        self.routing = None  # a list while the LM collects router logits (`output_router_logits`)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        router_logits, top_idx, top_weights = self.route(flat)
        if self.routing is not None:
            self.routing.append((router_logits, top_idx))
        output = run_experts(self.experts, flat, top_idx, top_weights)
        if self.shared_experts is not None:
            output = output + self.shared_experts(flat)
        return output.view(shape)


def load_balancing_loss(routings, num_experts: int, probabilities: Callable) -> torch.Tensor:
    """Switch-Transformer load balancing, averaged over the MoE layers: num_experts * sum_e f_e * P_e, with f_e the
    share of the layer's token -> expert assignments that went to expert e (the real choice: groups and expert bias
    included) and P_e the mean router probability of e (`probabilities(router_logits)`: differentiable)."""
    losses = []
    for router_logits, top_idx in routings:
        counts = torch.zeros(num_experts, device=top_idx.device, dtype=torch.float32)
        counts.index_add_(0, top_idx.flatten(), torch.ones(top_idx.numel(), device=top_idx.device))
        share = counts / top_idx.numel()
        losses.append(num_experts * (share * probabilities(router_logits.float()).mean(0)).sum())
    return torch.stack(losses).mean()


class LLaDADecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)) (+ a layer-level shared expert, LLaDA-MoE)."""

    def __init__(self, config, attention: nn.Module, mlp: nn.Module, shared_expert: nn.Module | None = None) -> None:
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.shared_expert = shared_expert
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, hidden_states: Tensor, position_embeddings: Tables, attention_mask=None, past_key_values=None, **kwargs
    ) -> Tensor:
        normed = self.input_layernorm(hidden_states)
        attn_output, _ = self.self_attn(normed, position_embeddings, attention_mask, past_key_values, **kwargs)
        hidden_states = hidden_states + attn_output
        normed = self.post_attention_layernorm(hidden_states)
        mlp_output = self.mlp(normed)
        if self.shared_expert is not None:
            mlp_output = mlp_output + self.shared_expert(normed)
        return hidden_states + mlp_output


class LLaDAFamilyPreTrainedModel(PreTrainedModel):
    """What every family's classes share: loading (a missing weight is an error), initialisation of the buffers that
    are not trained, saving."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDADecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # expert dispatch has data-dependent shapes (LLaDA-8B sets True)
    _can_record_outputs = {"hidden_states": LLaDADecoderLayer, "attentions": LLaDAAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (LLaDARotaryEmbedding, LLaDAPartialRotaryEmbedding)):
            module.reset(self.config)  # non-persistent buffers are not in checkpoints: rebuilt after loading
        elif isinstance(module, LLaDAGroupedRouter):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(getattr(module, "expert_bias", None), torch.Tensor):
            init.zeros_(module.expert_bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_missing_weights: bool = False, **kwargs):
        """Refuse a checkpoint that lacks a weight (transformers would initialise it randomly and only log a report;
        tied weights and rotary tables are not missing). `allow_missing_weights=True` keeps transformers' behaviour,
        e.g. to train a part the checkpoint does not have; `output_loading_info=True` still returns the report."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(info["missing_keys"])
        if missing and not allow_missing_weights:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise ValueError(
                f"The checkpoint {str(pretrained_model_name_or_path)!r} has no weights for {shown}: they would be "
                "randomly initialised. Pass allow_missing_weights=True to from_pretrained to accept that."
            )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """Save with the native key names (`llada_hf.export` writes the official or remote-code layout). A loaded
        official config carries an `auto_map` to remote-code files this save does not write: it is left out."""
        auto_map = self.config.__dict__.pop("auto_map", None)
        try:
            return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)
        finally:
            if auto_map is not None:
                self.config.auto_map = auto_map


class LLaDAFamilyModel(LLaDAFamilyPreTrainedModel):
    """The transformer body: embeddings, bidirectional layers, final norm. A family chooses `rotary_class`, the
    attention variant (`attention_options`) and each layer's MLP (`make_mlp`)."""

    rotary_class: type = LLaDAPartialRotaryEmbedding

    def __init__(self, config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([self.make_layer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = self.rotary_class(config)
        self.gradient_checkpointing = False
        self.post_init()

    def attention_options(self, config) -> dict:
        """`LLaDAAttention` keyword arguments: fused q/k/v, q/k norm, biases."""
        return {}

    def make_mlp(self, config, layer_idx: int) -> tuple[nn.Module, nn.Module | None]:
        """(MLP, layer-level shared expert or None) of layer `layer_idx`: by default a dense SwiGLU."""
        return LLaDAMLP(config, config.intermediate_size), None

    def make_layer(self, config, layer_idx: int) -> LLaDADecoderLayer:
        attention = LLaDAAttention(config, layer_idx, **self.attention_options(config))
        return LLaDADecoderLayer(config, attention, *self.make_mlp(config, layer_idx))

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
        """`attention_mask`: 2-D padding mask or 4-D (batch, 1, queries, keys) boolean / additive mask (`None`: full
        attention). `position_ids` default to `arange(seq)`: absolute columns, no correction for left padding (RoPE
        is relative and padding keys are masked out). With `past_key_values` (generation's caches) the inputs may be
        a slice of the canvas at `position_ids`; a 2-D `attention_mask` then covers the whole canvas."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            # Checked where it costs no device sync (CPU); generate() and the likelihood check once up front.
            vocab = self.config.vocab_size
            if _host_checkable(input_ids) and (input_ids.min() < 0 or input_ids.max() >= vocab):
                raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab}).")
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
            needed = inputs_embeds.shape[1]
        else:  # explicit positions: callers on accelerators make sure the tables cover them (generate() does)
            needed = int(position_ids.max()) + 1 if _host_checkable(position_ids) else 0
        if not torch.compiler.is_compiling():
            self.rotary_emb.ensure_length(needed)
        mask = build_attention_mask(self.config, inputs_embeds, attention_mask)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden_states = inputs_embeds
        layer_kwargs = dict(position_embeddings=position_embeddings, attention_mask=mask, **kwargs)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(hidden_states, past_key_values=past_key_values, **layer_kwargs)
        return BaseModelOutput(last_hidden_state=self.norm(hidden_states))


@dataclass
class MoeMaskedLMOutput(MaskedLMOutput):
    """`MaskedLMOutput` plus, with `output_router_logits=True`, the router logits of every MoE layer (tokens, experts)
    and the load-balancing auxiliary loss (already added, times `router_aux_loss_coef`, to `loss` with labels)."""

    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


class LLaDAFamilyModelLM(LLaDAFamilyPreTrainedModel):
    """The family's body (`body_class`) with its untied LM head: logits for every position; with `labels` (ids at
    masked positions, -100 elsewhere) and `p_mask`, the masked-diffusion ELBO term (`masked_diffusion_loss`)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    accepts_loss_kwargs = False  # the loss normalises itself; the Trainer must still divide by grad accumulation
    body_class: type
    moe_block: type | None = None

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = self.body_class(config)
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
        """`logits_to_keep` runs the head only where logits are needed: a slice or index tensor of columns (the
        sampler's block), or a boolean (batch, seq) mask (logits (n, vocab) of its true positions, row-major).

        MoE families: `output_router_logits` (default: the config's) returns the router logits and `aux_loss`, the
        Switch load-balancing loss (`load_balancing_loss`; every position counts, padding included), added to `loss`
        times `router_aux_loss_coef` with labels. Off in the official configs, which balance through `expert_bias`."""
        output_router_logits = kwargs.pop("output_router_logits", None)
        if output_router_logits is None:
            output_router_logits = getattr(self.config, "output_router_logits", False)
        moe = output_router_logits and self.moe_block is not None
        blocks = [m for m in self.modules() if isinstance(m, self.moe_block)] if moe else []
        for block in blocks:
            block.routing = []
        try:
            inputs = dict(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True
            )
            outputs = self.model(inputs_embeds=inputs_embeds, past_key_values=past_key_values, **inputs, **kwargs)
            routings = [record for block in blocks for record in block.routing]
        finally:
            for block in blocks:
                block.routing = None
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            hidden_states = hidden_states[logits_to_keep.to(hidden_states.device)]
        elif logits_to_keep is not None:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = masked_diffusion_loss(logits, labels, p_mask) if labels is not None else None
        out = dict(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        if self.moe_block is None:
            return MaskedLMOutput(**out)
        aux_loss = None
        if routings:
            aux_loss = load_balancing_loss(routings, self.config.num_experts, self.moe_block.probabilities)
            if loss is not None:
                out["loss"] = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        router_logits = tuple(r for r, _ in routings) if output_router_logits else None
        return MoeMaskedLMOutput(**out, aux_loss=aux_loss, router_logits=router_logits)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        """Pass-through, so peft's `CAUSAL_LM` wrapper can be built around this model."""
        return {"input_ids": input_ids, **kwargs}


def _host_checkable(tensor: torch.Tensor) -> bool:
    """Whether a value check on `tensor` is free: on the CPU, outside compilation, non-empty."""
    return tensor.device.type == "cpu" and tensor.numel() > 0 and not torch.compiler.is_compiling()


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
    token_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The masked-diffusion loss: (1/b) sum_i (1/n_i) sum_{j: label != -100} CE(logits_ij, label_ij) / p_ij, in fp32.

    The one implementation of the objective: the models' `labels=`/`p_mask=` loss, `llada_hf.training` and
    `llada_hf.likelihood` (`normalizer` = 1: the ELBO's sum). `p_mask` broadcasts against `labels` ((b, 1) or (b, l)).
    `normalizer` (b,) holds n_i: the answer length for SFT; by default the row length l (the paper's pre-training
    normalisation by b * l). Unshifted: position j predicts token j. `token_transform` maps the per-token CE before
    weighting (training's token reweighting). `p_mask` is required: without the 1/p_mask weights the sum is not the
    ELBO, and the autoregressive habit `model(ids, labels=ids)` would train the model to copy its input.
    """
    if p_mask is None:
        raise ValueError(
            "labels without p_mask: a masked-diffusion loss needs the noised input_ids, labels at the masked "
            "positions (-100 elsewhere) and p_mask (each row's masking probability); `model(input_ids, labels="
            "input_ids)` (the autoregressive habit) would train the model to copy its input. Use `llada_hf.training."
            "pretraining_loss(model, input_ids)` / `sft_loss(...)`, or `forward_process` and pass its labels/p_mask."
        )
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels.to(logits.device), reduction="none")
    if token_transform is not None:
        token_loss = token_transform(token_loss)
    weight = (labels != -100).to(token_loss.device) / p_mask.to(token_loss.device).float()
    per_row = (token_loss * weight).sum(-1)
    b, length = labels.shape
    if normalizer is None:
        return per_row.sum() / (b * length)
    return (per_row / normalizer.to(per_row).clamp(min=1)).sum() / b
