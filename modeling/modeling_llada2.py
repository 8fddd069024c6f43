"""LLaDA2.0: a mixture-of-experts masked-diffusion transformer (LLaDA2.0-mini, LLaDA2.0-flash).

Written in the style of `transformers`' Llama: attention through `ALL_ATTENTION_FUNCTIONS`, layers as
`GradientCheckpointingLayer`, outputs recorded by `capture_outputs`. The deltas from Llama:

* attention is bidirectional (`is_causal = False`); an explicit 2-D padding mask or a hand-built 4-D mask (the
  official sampler's block-causal mask: a block sees itself and every earlier block) is honoured;
* one fused q/k/v projection, RMSNorm on q and k per head (always, as in the official code), RoPE on the first
  `rotary_dim` dimensions of each head only, grouped-query attention;
* from layer `first_k_dense_replace` on, the MLP is a sparse mixture of experts: fp32 router logits, sigmoid scores,
  an expert bias added only to *choose* the experts, group-limited choice (groups scored by the sum of their two best
  experts, the best `topk_group` groups kept), the chosen un-biased scores renormalised and multiplied by
  `routed_scaling_factor`, plus the shared expert(s).

Official checkpoints load unchanged: a conversion mapping for `model_type="llada2_moe"` renames the attention keys
(`attention.query_key_value` -> `self_attn.qkv_proj`, `attention.dense` -> `self_attn.o_proj`,
`attention.query_layernorm` / `key_layernorm` -> `self_attn.q_norm` / `k_norm`, `word_embeddings` -> `embed_tokens`)
at load time; the MLP keys (`mlp.gate`, `mlp.experts.{e}`, `mlp.shared_experts`) are the official ones.
"""

from collections.abc import Callable
from dataclasses import dataclass

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

from .configuration_llada2 import LLaDA2MoeConfig
from .generation_llada2 import LLaDA2GenerationConfig, LLaDA2GenerationMixin
from .modeling_llada import MissingWeightsCheck, _host_checkable, masked_diffusion_loss, refuse_next_token_loss

# Official key -> native key, one anchored rule per tensor kind (one capture group each, as the loader expects).
LLADA2_OFFICIAL_KEY_MAPPING = {
    r"^model\.word_embeddings\.": "model.embed_tokens.",
    r"^model\.layers\.(\d+)\.attention\.query_key_value\.": r"model.layers.\1.self_attn.qkv_proj.",
    r"^model\.layers\.(\d+)\.attention\.dense\.": r"model.layers.\1.self_attn.o_proj.",
    r"^model\.layers\.(\d+)\.attention\.query_layernorm\.": r"model.layers.\1.self_attn.q_norm.",
    r"^model\.layers\.(\d+)\.attention\.key_layernorm\.": r"model.layers.\1.self_attn.k_norm.",
}
register_checkpoint_conversion_mapping(
    "llada2_moe",
    [WeightRenaming(source, target) for source, target in LLADA2_OFFICIAL_KEY_MAPPING.items()],
    overwrite=True,
)


@dataclass
class MoeMaskedLMOutput(MaskedLMOutput):
    """`MaskedLMOutput` plus, with `output_router_logits=True`, the router logits of every MoE layer (tokens, experts)
    and the load-balancing auxiliary loss (already added, times `router_aux_loss_coef`, to `loss` when labels are
    given)."""

    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


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


def collect_routing(model, blocks, forward):
    """Run `forward()` with the MoE `blocks` recording (router_logits, top_idx); return (its output, the records)."""
    for block in blocks:
        block.routing = []
    try:
        output = forward()
        records = [record for block in blocks for record in block.routing]
    finally:
        for block in blocks:
            block.routing = None
    return output, records


class LLaDA2RMSNorm(nn.Module):
    """RMSNorm in fp32, cast back, then scaled by the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
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


class LLaDA2RotaryEmbedding(nn.Module):
    """RoPE over the first `config.rotary_dim` dimensions of a head (partial rotary), computed in fp32 per call."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.inv_freq = nn.Buffer(self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config) -> torch.Tensor:
        dim = config.rotary_dim
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

    def ensure_length(self, length: int) -> None:
        """Tables are computed per call: any length works (the interface `DiffusionGenerationMixin` calls)."""

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of shape (batch, seq, rotary_dim) in `x`'s dtype, computed in fp32 without autocast."""
        if self.inv_freq.dtype != torch.float32:  # `model.to(dtype)` cast the buffer: rebuild it in fp32
            self.inv_freq = self.compute_inv_freq(self.config).to(self.inv_freq.device)
        inv_freq = self.inv_freq.to(x.device)
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = position_ids[..., None].to(torch.float32) * inv_freq
            angles = torch.cat((freqs, freqs), dim=-1)
            cos, sin = angles.cos(), angles.sin()
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_partial_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate the first `cos.shape[-1]` dimensions of q and k (batch, heads, seq, head_dim); keep the rest."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_embed = torch.cat((q_rot * cos + rotate_half(q_rot) * sin, q_pass), dim=-1)
    k_embed = torch.cat((k_rot * cos + rotate_half(k_rot) * sin, k_pass), dim=-1)
    return q_embed, k_embed


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


def build_attention_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None):
    """The attention bias for a bidirectional body.

    * `None` or an all-ones 2-D mask: `None` (full bidirectional attention);
    * a 2-D padding mask (batch, keys): padding keys masked out; keys may outnumber the queries (cached generation:
      the queries are a slice of the canvas, the mask covers the whole canvas);
    * a 4-D mask (batch, 1, queries, keys), e.g. the block-causal mask of the LLaDA2 sampler: boolean (True =
      attend) or additive float (0 / -inf); used as given, floats cast to the model dtype.
    """
    dtype = inputs_embeds.dtype
    if attention_mask is not None and attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=dtype, device=inputs_embeds.device)
            return bias.masked_fill(~attention_mask.to(bias.device), torch.finfo(dtype).min)
        return attention_mask.to(device=inputs_embeds.device, dtype=dtype)
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] != inputs_embeds.shape[1]:
        keep = attention_mask.bool()[:, None, None, :].expand(-1, 1, inputs_embeds.shape[1], -1)
        bias = torch.zeros(keep.shape, dtype=dtype, device=inputs_embeds.device)
        return bias.masked_fill(~keep.to(bias.device), torch.finfo(dtype).min)
    return create_bidirectional_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)


class LLaDA2Attention(nn.Module):
    """Bidirectional grouped-query attention with a fused q/k/v projection and per-head q/k RMSNorm."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False  # read by the sdpa/flash integrations: without it sdpa turns causal when unpadded
        qkv_size = (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_size, bias=config.use_qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)
        self.q_norm = LLaDA2RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = LLaDA2RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        qkv = self.qkv_proj(hidden_states).view(*input_shape, -1, self.head_dim)
        query, key, value = qkv.split([self.num_heads, self.num_key_value_heads, self.num_key_value_heads], dim=-2)
        query = self.q_norm(query).transpose(1, 2)
        key = self.k_norm(key).transpose(1, 2)
        value = value.transpose(1, 2)
        query, key = apply_partial_rotary_pos_emb(query, key, *position_embeddings)
        if past_key_values is not None:  # generation's prefix/dual KV cache: keys of all canvas columns
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class LLaDA2MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); the dense layers' MLP, each expert, and the shared expert(s)."""

    def __init__(self, config, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2Router(nn.Module):
    """Sigmoid router with group-limited top-k choice (official module name: `gate`).

    `expert_bias` (a buffer: it is not trained by gradients but by the load-balancing rule of the training recipe)
    shifts the scores used to *choose* experts and groups; the weights are the chosen un-biased sigmoid scores,
    renormalised (`norm_topk_prob`) and multiplied by `routed_scaling_factor`.
    """

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        if config.moe_router_enable_expert_bias:
            self.expert_bias = nn.Buffer(torch.zeros(config.num_experts, dtype=torch.float32))
        else:
            self.expert_bias = None

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router_logits (tokens, experts) fp32, top-k expert ids (tokens, k), their fp32 weights (tokens, k))."""
        router_logits = F.linear(hidden_states.float(), self.weight.float())
        scores = router_logits.sigmoid()
        choice = scores if self.expert_bias is None else scores + self.expert_bias.float()
        tokens = choice.shape[0]
        group_scores = choice.view(tokens, self.n_group, -1).topk(2, dim=-1).values.sum(dim=-1)
        kept_groups = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)
        expert_mask = group_mask.repeat_interleave(self.num_experts // self.n_group, dim=-1)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
        top_idx = choice.topk(self.top_k, dim=-1, sorted=False).indices
        top_weights = scores.gather(1, top_idx)
        if self.norm_topk_prob:
            top_weights = top_weights / (top_weights.sum(dim=-1, keepdim=True) + 1e-20)
        return router_logits, top_idx, top_weights * self.routed_scaling_factor


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


class LLaDA2SparseMoeBlock(nn.Module):
    """Routed experts plus the shared expert(s) (official names `gate`, `experts.{e}`, `shared_experts`)."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.gate = LLaDA2Router(config)
        self.experts = nn.ModuleList(
            [LLaDA2MLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)]
        )
        self.shared_experts = None
        if config.num_shared_experts:
            self.shared_experts = LLaDA2MLP(config, config.moe_intermediate_size * config.num_shared_experts)
        self.routing = None  # a list while the LM collects router logits (`output_router_logits`)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        router_logits, top_idx, top_weights = self.gate(flat)
        if self.routing is not None:
            self.routing.append((router_logits, top_idx))
        output = run_experts(self.experts, flat, top_idx, top_weights)
        if self.shared_experts is not None:
            output = output + self.shared_experts(flat)
        return output.view(shape)


class LLaDA2DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LLaDA2Attention(config=config, layer_idx=layer_idx)
        if config.is_moe_layer(layer_idx):
            self.mlp = LLaDA2SparseMoeBlock(config)
        else:
            self.mlp = LLaDA2MLP(config, config.intermediate_size)
        self.input_layernorm = LLaDA2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LLaDA2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

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


class LLaDA2PreTrainedModel(MissingWeightsCheck, PreTrainedModel):
    config: LLaDA2MoeConfig
    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # expert dispatch has data-dependent shapes
    _can_record_outputs = {"hidden_states": LLaDA2DecoderLayer, "attentions": LLaDA2Attention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LLaDA2RotaryEmbedding):  # non-persistent buffer: rebuilt after loading (trap 2)
            init.copy_(module.inv_freq, module.compute_inv_freq(self.config))
        elif isinstance(module, LLaDA2Router):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.expert_bias is not None:
                init.zeros_(module.expert_bias)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """Save with the native key names. A loaded official config carries an `auto_map` to remote-code files this
        save does not write: it is left out."""
        auto_map = self.config.__dict__.pop("auto_map", None)
        try:
            return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)
        finally:
            if auto_map is not None:
                self.config.auto_map = auto_map


class LLaDA2MoeModel(LLaDA2PreTrainedModel):
    """The transformer body: embeddings, bidirectional layers, final norm."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LLaDA2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LLaDA2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LLaDA2RotaryEmbedding(config)
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
        """`attention_mask`: 2-D padding mask, or a 4-D (batch, 1, queries, keys) boolean / additive mask such as the
        block-causal mask of the LLaDA2 sampler; `None` is full bidirectional attention. `position_ids` default to
        `arange(seq)`. `past_key_values` (generation's KV cache) lets the inputs be a slice of the canvas."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            vocab = self.config.vocab_size
            if _host_checkable(input_ids) and (input_ids.min() < 0 or input_ids.max() >= vocab):
                raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab}).")
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        mask = build_attention_mask(self.config, inputs_embeds, attention_mask)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
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


class LLaDA2MoeModelLM(LLaDA2PreTrainedModel, LLaDA2GenerationMixin):
    """LLaDA2.0 with its (untied) LM head: logits for every position.

    `generate()` is the LLaDA2.0 sampler (`generation_llada2.py`: block-causal blocks, per-block count schedule with
    `threshold` / `minimal_topk`); `official=True` reproduces the hub `generate()` token for token, quirks included.

    With `labels` (ids at masked positions, -100 elsewhere) and `p_mask` the loss is the masked-diffusion ELBO term
    sum(CE / p_mask) / labels.numel(); without `p_mask`, the mean CE over labelled positions.

    Router auxiliary loss (opt-in: `output_router_logits=True` in the call or the config; off in the official
    configs, whose recipe balances experts by updating `expert_bias`, not by a loss): the Switch load-balancing loss
    of `load_balancing_loss` (probabilities: the per-token-normalised sigmoid scores), returned as `aux_loss` with the
    router logits, and added to `loss` times `router_aux_loss_coef` when labels are given. Every position counts
    (padding included).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    generation_config_class = LLaDA2GenerationConfig
    accepts_loss_kwargs = False  # the loss normalises itself; the Trainer must still divide by grad accumulation

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
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
        logits_to_keep: slice | None = None,
        past_key_values=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        """`logits_to_keep` (a slice of positions) runs the head only where logits are needed;
        `output_router_logits` (default: the config's) adds the router logits and the auxiliary loss."""
        return moe_lm_forward(
            self, LLaDA2SparseMoeBlock, normalised_sigmoid, input_ids, attention_mask, position_ids, inputs_embeds,
            labels, p_mask, logits_to_keep, past_key_values, kwargs,
        )  # fmt: skip

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        """Pass-through, so peft's `CAUSAL_LM` wrapper can be built around this model."""
        return {"input_ids": input_ids, **kwargs}


def normalised_sigmoid(router_logits: torch.Tensor) -> torch.Tensor:
    """LLaDA2's router probabilities for the auxiliary loss: sigmoid scores normalised over the experts."""
    scores = router_logits.sigmoid()
    return scores / scores.sum(-1, keepdim=True)


def moe_lm_forward(
    lm,
    block_type,
    probabilities: Callable,
    input_ids,
    attention_mask,
    position_ids,
    inputs_embeds,
    labels,
    p_mask,
    logits_to_keep,
    past_key_values,
    kwargs: dict,
) -> "MoeMaskedLMOutput":
    """The LM-head forward of both MoE families: body (router logits collected when asked), head on the kept columns,
    masked-diffusion loss, and the opt-in router auxiliary loss with the family's router `probabilities`."""
    output_router_logits = kwargs.pop("output_router_logits", None)
    if output_router_logits is None:
        output_router_logits = lm.config.output_router_logits
    blocks = [m for m in lm.modules() if isinstance(m, block_type)] if output_router_logits else []
    outputs, routings = collect_routing(
        lm,
        blocks,
        lambda: lm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            return_dict=True,
            **kwargs,
        ),
    )
    hidden_states = outputs.last_hidden_state
    if logits_to_keep is not None:
        hidden_states = hidden_states[:, logits_to_keep]
    logits = lm.lm_head(hidden_states)
    loss = masked_diffusion_loss(logits, labels, p_mask) if labels is not None else None
    aux_loss = None
    if routings:
        aux_loss = load_balancing_loss(routings, lm.config.num_experts, probabilities)
        if loss is not None:
            loss = loss + lm.config.router_aux_loss_coef * aux_loss.to(loss.device)
    return MoeMaskedLMOutput(
        loss=loss,
        logits=logits,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
        aux_loss=aux_loss,
        router_logits=tuple(r for r, _ in routings) if output_router_logits else None,
    )  # fmt: skip


__all__ = [
    "LLADA2_OFFICIAL_KEY_MAPPING",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2PreTrainedModel",
    "MoeMaskedLMOutput",
    "load_balancing_loss",
]
