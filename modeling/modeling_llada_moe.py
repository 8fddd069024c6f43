"""LLaDA-MoE: an OLMoE-shaped mixture-of-experts masked-diffusion transformer (LLaDA-MoE-7B-A1B).

The deltas from `transformers`' Llama: bidirectional attention; separate q/k/v projections with RMSNorm on q and k
per head (`qk_layernorm`) and RoPE on the first `rotary_dim` dimensions of each head; per layer (`moe_layer_freq`)
either a dense SwiGLU MLP or a sparse mixture of experts (softmax router over all experts, the expert bias *added to
the probabilities* so it changes the weights as well as the choice, top-k, no renormalisation unless
`norm_topk_prob`) plus an optional shared expert.

Official checkpoints already use these (Llama-style) key names and load unchanged. The sampler and likelihood are the
LLaDA-8B ones (`DiffusionGenerationMixin.generate()`, `llada_hf.likelihood`).

**Deviation from the official forward:** the official model drops any attention mask (always full attention, padding
included). This one honours it: a left-padded batch gives every row the logits (and `generate()` answers) it gets
alone. Without padding (no mask, or an all-ones mask) both compute the same thing.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_llada_moe import LLaDAMoEConfig
from .generation_llada import DiffusionGenerationMixin, LLaDAGenerationConfig
from .modeling_llada import MissingWeightsCheck, _host_checkable, refuse_next_token_loss
from .modeling_llada2 import (
    LLaDA2MLP,
    LLaDA2RMSNorm,
    LLaDA2RotaryEmbedding,
    apply_partial_rotary_pos_emb,
    build_attention_mask,
    eager_attention_forward,
    moe_lm_forward,
    run_experts,
)

# model_type "llada" carries LLaDA-8B's key renaming (and its inverse on save): these classes need none. A mapping
# registered under the class name takes priority over the model_type one.
for _class_name in ("LLaDAMoEModelLM", "LLaDAMoEModel"):
    register_checkpoint_conversion_mapping(_class_name, [], overwrite=True)


class LLaDAMoEAttention(nn.Module):
    """Bidirectional grouped-query attention with per-head q/k RMSNorm and partial RoPE."""

    def __init__(self, config: LLaDAMoEConfig, layer_idx: int) -> None:
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
        if config.qk_layernorm:
            self.q_norm = LLaDA2RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LLaDA2RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

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
        query = self.q_proj(hidden_states).view(hidden_shape)
        key = self.k_proj(hidden_states).view(hidden_shape)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = apply_partial_rotary_pos_emb(query.transpose(1, 2), key.transpose(1, 2), *position_embeddings)
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


class LLaDAMoESparseMoeBlock(nn.Module):
    """Softmax router (`gate`) with `expert_bias` added to the probabilities, top-k experts (`experts.{e}`)."""

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [LLaDA2MLP(config, config.expert_intermediate_size) for _ in range(config.num_experts)]
        )
        if config.moe_router_enable_expert_bias:
            self.expert_bias = nn.Buffer(torch.zeros(config.num_experts, dtype=torch.float32))
        else:
            self.expert_bias = None
        self.routing = None  # a list while the LM collects router logits (`output_router_logits`)

    def route(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router_logits, top-k expert ids, their weights) for (tokens, hidden) inputs; weights in fp32."""
        router_logits = self.gate(hidden_states)
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            probs = probs + self.expert_bias.float()
        top_weights, top_idx = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_idx, top_weights

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        router_logits, top_idx, top_weights = self.route(flat)
        if self.routing is not None:
            self.routing.append((router_logits, top_idx))
        return run_experts(self.experts, flat, top_idx, top_weights).view(shape)


class LLaDAMoEDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LLaDAMoEConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LLaDAMoEAttention(config=config, layer_idx=layer_idx)
        self.shared_expert = None
        if config.is_moe_layer(layer_idx):
            self.mlp = LLaDAMoESparseMoeBlock(config)
            if config.shared_expert_intermediate_size:
                self.shared_expert = LLaDA2MLP(config, config.shared_expert_intermediate_size)
        else:
            self.mlp = LLaDA2MLP(config, config.dense_intermediate_size)
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
        normed = self.post_attention_layernorm(hidden_states)
        mlp_output = self.mlp(normed)
        if self.shared_expert is not None:
            mlp_output = mlp_output + self.shared_expert(normed)
        return hidden_states + mlp_output


class LLaDAMoEPreTrainedModel(MissingWeightsCheck, PreTrainedModel):
    config: LLaDAMoEConfig
    config_class = LLaDAMoEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDAMoEDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # expert dispatch has data-dependent shapes
    _can_record_outputs = {"hidden_states": LLaDAMoEDecoderLayer, "attentions": LLaDAMoEAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LLaDA2RotaryEmbedding):  # non-persistent buffer: rebuilt after loading
            init.copy_(module.inv_freq, module.compute_inv_freq(self.config))
        elif isinstance(module, LLaDAMoESparseMoeBlock) and module.expert_bias is not None:
            init.zeros_(module.expert_bias)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """Save (key names are the official ones). A loaded official config carries an `auto_map` to remote-code files
        this save does not write: it is left out."""
        auto_map = self.config.__dict__.pop("auto_map", None)
        try:
            return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)
        finally:
            if auto_map is not None:
                self.config.auto_map = auto_map


class LLaDAMoEModel(LLaDAMoEPreTrainedModel):
    """The transformer body: embeddings, bidirectional layers, final norm."""

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LLaDAMoEDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
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
        """`attention_mask` (2-D padding mask, or a 4-D boolean / additive mask) is honoured, unlike the official
        forward, which ignores it. `past_key_values` (generation's KV cache) lets the inputs be a canvas slice."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            vocab = self.config.vocab_size
            if _host_checkable(input_ids) and (input_ids.min() < 0 or input_ids.max() >= vocab):
                raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab}).")
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            # Absolute columns, no correction for left padding: RoPE is relative and padding keys are masked out.
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


class LLaDAMoEModelLM(LLaDAMoEPreTrainedModel, DiffusionGenerationMixin):
    """LLaDA-MoE with its (untied) LM head: logits for every position, and the LLaDA masked-diffusion sampler as
    `generate()` (the official ML-GSAI `generate.py` semantics, token-exact on the golden cases).

    With `labels` (ids at masked positions, -100 elsewhere) and `p_mask` the loss is the masked-diffusion ELBO term
    sum(CE / p_mask) / labels.numel(); without `p_mask`, the mean CE over labelled positions.

    Router auxiliary loss (opt-in: `output_router_logits=True` in the call or the config): the Switch load-balancing
    loss (`modeling_llada2.load_balancing_loss`, probabilities: the softmax of the router logits, the real top-k
    choice with the expert bias), returned as `aux_loss` with the router logits and added to `loss` times
    `router_aux_loss_coef` when labels are given. Every position counts (padding included).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    generation_config_class = LLaDAGenerationConfig
    accepts_loss_kwargs = False  # the loss normalises itself; the Trainer must still divide by grad accumulation

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__(config)
        self.model = LLaDAMoEModel(config)
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
            self, LLaDAMoESparseMoeBlock, _softmax, input_ids, attention_mask, position_ids, inputs_embeds, labels,
            p_mask, logits_to_keep, past_key_values, kwargs,
        )  # fmt: skip

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        """Pass-through, so peft's `CAUSAL_LM` wrapper can be built around this model."""
        return {"input_ids": input_ids, **kwargs}


def _softmax(router_logits: torch.Tensor) -> torch.Tensor:
    """LLaDA-MoE's router probabilities for the auxiliary loss."""
    return router_logits.softmax(-1)


__all__ = ["LLaDAMoEModel", "LLaDAMoEModelLM", "LLaDAMoEPreTrainedModel"]
