"""Masked-diffusion generation for LLaDA: `LLaDAGenerationConfig` and `DiffusionGenerationMixin.generate()`.

The sampler follows the official ML-GSAI `generate.py`: a canvas of `max_new_tokens` mask tokens after the prompt is
filled block by block (semi-autoregressive); each step predicts every position with one bidirectional forward and
commits the most confident masked predictions of the current block. The number committed per step is the official
schedule, random numbers are drawn in the official order, shapes and dtypes, so greedy and seeded CPU runs reproduce
the official tokens exactly. Everything beyond the official sampler (logits processors, threshold/factor selection,
self-correction, stopping criteria, EOS early stop, infilling, streaming) is opt-in.

The sampler is a small engine: `DiffusionSampler` is built once per call from the config (proposal, confidence rule,
selection rule, remasking) and its `step()` is a pure function of a handful of tensors, with static shapes per block
and no host synchronisation, so it compiles whole. The per-call loop state lives in one `DiffusionState`.
"""

import copy
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers.generation.configuration_utils import GenerationConfig
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    InfNanRemoveLogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.generation.stopping_criteria import StoppingCriteriaList, StopStringCriteria
from transformers.utils import ModelOutput

# ---------------------------------------------------------------------------------------------------------------------
# Configuration and the generate() contract

#: 8B special ids; used only when the model's vocabulary is the 8B one and its config does not name them.
LLADA_8B_VOCAB, LLADA_8B_MASK, LLADA_8B_EOT = 126464, 126336, 126348

#: Every `GenerationConfig` field with a diffusion meaning (the README's option table says what each does).
HONOURED_FIELDS = {
    "max_length": "prompt + new tokens; `max_new_tokens` wins when both are given",
    "max_new_tokens": "length of the canvas after the prompt",
    "min_length": "as `min_new_tokens`, counted from the start of the prompt",
    "min_new_tokens": "EOS cannot be proposed in the first `min_new_tokens` answer columns",
    "do_sample": "Gumbel-max sampling of each masked position (else argmax)",
    "temperature": "sampling temperature (official fp64 Gumbel noise); 0 = greedy",
    "top_k": "proposal keeps the k most likely tokens (sampling only, as in transformers)",
    "top_p": "nucleus of the tempered proposal (sampling only)",
    "min_p": "min-p filter of the tempered proposal (sampling only)",
    "typical_p": "typical filter of the tempered proposal (sampling only)",
    "epsilon_cutoff": "epsilon filter of the tempered proposal (sampling only)",
    "eta_cutoff": "eta filter of the tempered proposal (sampling only)",
    "repetition_penalty": "tokens already on the canvas (prompt and committed) are penalised at every masked position",
    "bad_words_ids": "single-token entries are never proposed (multi-token entries are rejected: order-dependent)",
    "sequence_bias": "single-token entries bias every proposal (multi-token entries are rejected: order-dependent)",
    "suppress_tokens": "never proposed",
    "begin_suppress_tokens": "never proposed in the first answer column",
    "renormalize_logits": "log-softmax after the processors",
    "remove_invalid_values": "nan/inf logits replaced before the processors",
    "stop_strings": "checked on the final prefix (no mask before it); the rest of the row becomes EOS",
    "num_return_sequences": "each prompt repeated",
    "output_scores": "per step, the processed logits of the scored columns (`scores`)",
    "output_logits": "per step, the raw logits of the scored columns (`logits`)",
    "return_dict_in_generate": "a `DiffusionGenerateOutput`",
    "use_cache": "no effect alone (no autoregressive cache); `False` conflicts with `cache='prefix'/'dual'`",
    "pad_token_id": "left padding; must differ from the mask id",
    "bos_token_id": "recorded only",
    "eos_token_id": "EOS for early stop, stop strings, `min_new_tokens` and EOS suppression",
}

#: Fields that have no diffusion meaning here, with what to use instead (any other non-default field is rejected too).
REJECTED_FIELDS = {
    "num_beams": "beam search has no diffusion counterpart here",
    "early_stopping": "a beam-search option; EOS early stop is `early_stop=True`",
    "length_penalty": "a beam-search option",
    "num_beam_groups": "group beam search has no diffusion counterpart",
    "diversity_penalty": "group beam search has no diffusion counterpart",
    "constraints": "constrained beam search has no diffusion counterpart",
    "force_words_ids": "constrained beam search has no diffusion counterpart",
    "penalty_alpha": "contrastive search has no diffusion counterpart",
    "dola_layers": "DoLa decoding has no diffusion counterpart",
    "guidance_scale": "use cfg_scale (= guidance_scale - 1, the official LLaDA parameter)",
    "no_repeat_ngram_size": "n-gram bans depend on left-to-right order; a diffusion canvas is filled out of order",
    "encoder_no_repeat_ngram_size": "no encoder",
    "encoder_repetition_penalty": "no encoder",
    "forced_bos_token_id": "put the token in the prompt",
    "forced_eos_token_id": "use early_stop / stop_strings",
    "exponential_decay_length_penalty": "an autoregressive length rule",
    "max_time": "a canvas stopped mid-way still holds masks",
    "min_length": None,  # honoured (listed for completeness of the check below)
    "token_healing": "an autoregressive prompt repair",
    "watermarking_config": "watermarking assumes left-to-right generation",
    "output_attentions": "not collected by the sampler",
    "output_hidden_states": "not collected by the sampler",
    "cache_implementation": "use cache='prefix' or 'dual'",
    "cache_config": "use cache='prefix' or 'dual'",
    "max_cache_len": "use cache='prefix' or 'dual'",
    "compile_config": "use compile=True or a torch.compile mode name",
    "disable_compile": "use compile=False",
    "prefill_chunk_size": "no autoregressive prefill",
    "low_memory": "a beam/contrastive search option",
    "use_mtp": "no multi-token-prediction heads",
    "continuous_batching_config": "continuous batching is autoregressive",
    "decoder_start_token_id": "no decoder start token",
    "is_assistant": "assisted decoding is autoregressive",
    "num_assistant_tokens": "assisted decoding is autoregressive",
    "num_assistant_tokens_schedule": "assisted decoding is autoregressive",
    "assistant_confidence_threshold": "assisted decoding is autoregressive",
    "assistant_early_exit": "assisted decoding is autoregressive",
    "assistant_lookbehind": "assisted decoding is autoregressive",
    "target_lookbehind": "assisted decoding is autoregressive",
    "assistant_ensemble_weight": "assisted decoding is autoregressive",
    "prompt_lookup_num_tokens": "prompt-lookup decoding is autoregressive",
    "max_matching_ngram_size": "prompt-lookup decoding is autoregressive",
    "speculation_type": "speculative decoding is autoregressive",
    "top_h": "not implemented for the diffusion proposal",
}
del REJECTED_FIELDS["min_length"]

#: `generate()` keywords that are not config fields: honoured, or rejected with a reason.
REJECTED_KWARGS = {
    "assistant_model": "assisted decoding is autoregressive",
    "prefix_allowed_tokens_fn": "a left-to-right constraint; use a logits_processor",
    "negative_prompt_ids": "use cfg_scale (the unconditional branch masks the prompt)",
    "negative_prompt_attention_mask": "use cfg_scale",
    "custom_generate": "the diffusion generate() is the model's own",
    "past_key_values": "no autoregressive cache",
}

#: Filters of the sampled proposal: like transformers' warpers, they act only when sampling (warned otherwise).
SAMPLING_FILTERS = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}


def _filter_is_set(config, name: str) -> bool:
    value = getattr(config, name, None)
    return value is not None and value != SAMPLING_FILTERS[name]


SELECTIONS = ("schedule", "threshold", "factor")
CACHE_MODES = ("none", "prefix", "dual")
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class LLaDAGenerationConfig(GenerationConfig):
    """`GenerationConfig` with the diffusion sampler's fields; saved as `generation_config.json`.

    Args:
        steps: denoising steps (= forwards) for the whole canvas; `None` means one token per step.
        block_length: semi-autoregressive block size; `None` means one block spanning `max_new_tokens`.
        remasking: confidence rule deciding which predictions are committed: one of `CONFIDENCE_RULES`.
        cfg_scale: classifier-free guidance scale (0 = off); the unconditional branch masks the prompt.
        threshold: Fast-dLLM threshold selection: commit every masked token of the block whose confidence is >=
            threshold (at least one per step); the fixed schedule is then not used.
        factor: Fast-dLLM factor selection: commit the n most confident tokens with (n + 1)(1 - c_n) < factor.
        remask_budget / remask_threshold / remask_per_step: self-correction (ReMDM-conf, Wang et al. 2025,
            arXiv:2503.00307): after each commit, up to `remask_per_step` earlier commits of the current block whose
            proposal probability when committed was below `remask_threshold` are masked again and re-predicted in
            the fuller context, at most `remask_budget` per row and block. The next step commits that many more
            tokens, so the number of forwards is unchanged. 0 = off.
        mask_token_id / eot_token_id: the `<|mdm_mask|>` and `<|eot_id|>` ids (default: the model config's).
        suppress_eos_logits: forbid EOS (`logits_eos_inf` of the official sampler).
        suppress_eos_confidence: `None`, `"official"` (the official `confidence_eos_eot_inf`, bug for bug) or
            `"rank_last"` (what it intends: EOS/EoT predictions are committed only after every other candidate).
        early_stop: per row, stop spending forwards once its answer is final up to the first EOS (rest: EOS).
        infill: allow mask tokens inside the prompt; they are filled too (in the first block's steps).
        output_history: with `return_dict_in_generate`, keep the canvas after every step.
        fast: compute logits, sampling and confidences only on the current block's columns (the only candidates),
            drawing random numbers in the official shapes; `False` runs the literal official computation.
        cache: `"none"`, `"prefix"` or `"dual"` (Fast-dLLM KV caching, approximate by design).
        compile: compile the whole denoising step (forward + proposal + selection + commit) with
            `fullgraph=True`; `True` or a `torch.compile` mode such as `"reduce-overhead"` (CUDA graphs).
    """

    _diffusion_defaults = {
        "steps": None,
        "block_length": None,
        "remasking": "low_confidence",
        "cfg_scale": 0.0,
        "threshold": None,
        "factor": None,
        "remask_budget": 0,
        "remask_threshold": 0.9,
        "remask_per_step": 1,
        "mask_token_id": None,
        "eot_token_id": None,
        "suppress_eos_logits": False,
        "suppress_eos_confidence": None,
        "early_stop": False,
        "infill": False,
        "output_history": False,
        "fast": True,
        "cache": "none",
        "compile": False,
    }

    def __init__(self, **kwargs):
        for name, default in self._diffusion_defaults.items():
            setattr(self, name, kwargs.pop(name, default))
        # Explicit, so `pipeline()` sees them in `to_diff_dict()` and does not inject sampling defaults.
        if kwargs.get("do_sample") is None:
            kwargs["do_sample"] = False
        if kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None:
            kwargs["max_new_tokens"] = 128
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, model_config) -> "LLaDAGenerationConfig":
        """Only token ids come from the model config (the base version copies every matching attribute)."""
        config = model_config if isinstance(model_config, dict) else model_config.to_dict()
        ids = ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id", "eot_token_id")
        generation_config = cls(**{k: config[k] for k in ids if config.get(k) is not None})
        generation_config._from_model_config = True
        return generation_config

    def validate(self, strict: bool = False, user_set_attributes: set[str] | None = None):
        """Diffusion fields, then the base checks (without its autoregressive max_new_tokens > 0 rule)."""
        _check_choice("remasking", self.remasking, sorted(CONFIDENCE_RULES))
        _check_choice("cache", self.cache, CACHE_MODES)
        _check_choice("suppress_eos_confidence", self.suppress_eos_confidence, (None, "official", "rank_last"))
        _check_choice("compile", self.compile, COMPILE_MODES)
        _check_number("temperature", self.temperature, low=0.0, optional=True)
        _check_number("cfg_scale", self.cfg_scale, low=0.0)
        _check_number("threshold", self.threshold, low=0.0, high=1.0, low_open=True, optional=True)
        _check_number("factor", self.factor, low=0.0, low_open=True, optional=True)
        _check_number("remask_threshold", self.remask_threshold, low=0.0, high=1.0)
        if self.threshold is not None and self.factor is not None:
            raise ValueError("threshold and factor are two selection rules: set at most one.")
        for name in ("steps", "block_length"):
            _check_int(name, getattr(self, name), low=1, optional=True)
        for name in ("remask_budget", "max_new_tokens", "min_new_tokens", "min_length"):
            _check_int(name, getattr(self, name), low=0, optional=True)
        _check_int("remask_per_step", self.remask_per_step, low=1)
        _check_int("max_length", self.max_length, low=1, optional=True)
        _check_int("num_return_sequences", self.num_return_sequences, low=1, optional=True)
        max_new_tokens, self.max_new_tokens = self.max_new_tokens, None
        try:
            super().validate(strict=strict, user_set_attributes=user_set_attributes)
        finally:
            self.max_new_tokens = max_new_tokens

    @property
    def selection(self) -> str:
        """The selection rule these fields choose: `schedule` (official), `threshold` or `factor`."""
        return "threshold" if self.threshold is not None else "factor" if self.factor is not None else "schedule"


def _check_choice(name: str, value, choices) -> None:
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices) or value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid: {list(choices)}.")


def _check_int(name: str, value, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{' or None' if optional else ''}, got {value!r}.")


def _check_number(name, value, low=None, high=None, low_open=False, optional=False) -> None:
    """Finite real in [low, high] (or (low, high]); nan and inf are refused: they give junk or silently no-op."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high else ')'}"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}.")


def check_contract(config: GenerationConfig, kwargs: dict) -> None:
    """Reject every set field or keyword without a diffusion meaning, naming it (never silently ignore one)."""
    defaults = GenerationConfig._get_default_generation_params()
    for name in GenerationConfig().to_dict():
        if name in HONOURED_FIELDS or name.startswith("_") or name == "transformers_version":
            continue
        value = getattr(config, name, None)
        if value is not None and value != defaults.get(name):
            reason = REJECTED_FIELDS.get(name, "no diffusion meaning")
            raise ValueError(f"generate() does not support {name}={value!r}: {reason}.")
    for name, reason in REJECTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"generate() does not support {name}: {reason}.")
    if kwargs.get("synced_gpus"):
        raise ValueError("generate() does not support synced_gpus=True: every rank runs the same number of steps.")
    entries = {
        "bad_words_ids": config.bad_words_ids or [],
        "sequence_bias": [i for i, _ in _bias_items(config.sequence_bias)],
    }
    for name, sequences in entries.items():
        if any(len(tuple(ids)) != 1 for ids in sequences):
            raise ValueError(
                f"{name}: only single-token entries are supported; a diffusion canvas is filled out of order, so a "
                "multi-token sequence cannot be banned or biased reliably."
            )
    if config.use_cache is False and config.cache != "none":
        raise ValueError(f"use_cache=False conflicts with cache={config.cache!r}.")


def _bias_items(sequence_bias) -> list:
    """(ids, bias) pairs of `sequence_bias`, given as a dict or in its serialised form [[ids, bias], ...]."""
    if not sequence_bias:
        return []
    return list(sequence_bias.items()) if isinstance(sequence_bias, dict) else [tuple(p) for p in sequence_bias]


# ---------------------------------------------------------------------------------------------------------------------
# Primitives


def classifier_free_guidance(logits_fn, input_ids, unconditional_ids, cfg_scale: float, attention_mask=None):
    """un + (s + 1)(cond - un) from one forward over [cond; uncond] (the official order of operations).

    `logits_fn(input_ids, attention_mask)` returns logits; the unconditional rows are the same rows with the prompt
    masked. With `cfg_scale == 0` it is one plain forward. Used by generation and by the likelihood estimator.
    """
    if cfg_scale == 0:
        return logits_fn(input_ids, attention_mask)
    both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    cond, uncond = logits_fn(torch.cat([input_ids, unconditional_ids]), both_mask).chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def low_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Probability of the predicted token under softmax(logits), in the logits' dtype (official: bf16)."""
    probs = F.softmax(logits, dim=-1)
    return torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)


def random_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform random scores: the official fp32 `rand((B, L))` draw, windowed (drawn by `DiffusionSampler`)."""
    return noise


def margin_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Top-1 minus top-2 probability: commits positions where the model is not torn between two tokens."""
    top2 = F.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def entropy_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Negative entropy of the predictive distribution (higher = more certain)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return (log_probs.exp() * log_probs).sum(-1)


#: name -> rule(logits, x0, noise) -> confidence (B, W). "random" needs the noise the sampler draws.
CONFIDENCE_RULES = {
    "low_confidence": low_confidence,
    "random": random_confidence,
    "margin": margin_confidence,
    "entropy": entropy_confidence,
}


def sample_tokens(logits: torch.Tensor, temperature: float, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """argmax at temperature 0; else Gumbel-max in float64: exp(logits) / (-log u)^T with the given u ~ U(0, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return (logits.to(torch.float64).exp() / (-torch.log(uniform)) ** temperature).argmax(dim=-1)


def transfer_schedule(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit per row and step (B, steps): n // steps each, the first n % steps steps one more."""
    base, remainder = mask_counts // steps, mask_counts % steps
    return base[:, None] + (torch.arange(steps, device=mask_counts.device)[None, :] < remainder[:, None])


def select_topk(confidence: torch.Tensor, k: int | torch.Tensor, k_max: int | None = None) -> torch.Tensor:
    """Boolean selection of the k most confident columns per row, without host sync.

    `k` an int: one batched `topk(k)`, the official per-row call (same op, so the same pick among bf16 ties).
    `k` a (B,) tensor: one `topk(k_max)`, then the first k[row] of each row.
    """
    selected = torch.zeros_like(confidence, dtype=torch.bool)
    if isinstance(k, int):
        return selected.scatter_(1, torch.topk(confidence, k, dim=-1).indices, True) if k > 0 else selected
    top = torch.topk(confidence, k_max, dim=-1)
    keep = torch.arange(k_max, device=confidence.device)[None, :] < k[:, None]
    return selected.scatter_(1, top.indices, keep)


def _select_count(confidence: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The `count[row]` best candidates (at least one, at most all finite ones)."""
    candidates = confidence > -torch.inf
    count = count.clamp(min=1).minimum(candidates.sum(-1))
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
    ranks_kept = torch.arange(confidence.shape[1], device=confidence.device)[None, :] < count[:, None]
    return torch.zeros_like(candidates).scatter_(1, order, ranks_kept)


def select_threshold(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Every candidate with confidence >= threshold, and at least the best one (Fast-dLLM parallel decoding)."""
    return _select_count(confidence, ((confidence >= threshold) & (confidence > -torch.inf)).sum(-1))


def select_factor(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule: the largest n with (n + 1)(1 - c_(n)) < factor, c sorted descending (at least 1)."""
    ranked = torch.sort(confidence.float(), dim=-1, descending=True).values
    n = torch.arange(1, ranked.shape[1] + 1, device=ranked.device)[None, :]
    ok = ((n + 1) * (1 - ranked) < factor) & (ranked > -torch.inf)
    return _select_count(confidence, ok.cumprod(-1).sum(-1))


def estimate_step_bytes(rows: int, length: int, window: int, vocab: int, sampling: bool, cfg: bool) -> int:
    """Bytes one denoising step allocates beyond the weights: canvas, logits of the window, the official noise."""
    logits = rows * (2 if cfg else 1) * window * vocab * 4 * 3  # raw, processed/softmax, temporaries
    noise = rows * length * vocab * 8 if sampling else 0  # official fp64 Gumbel noise over the whole canvas
    return rows * length * 8 * 4 + logits + noise


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """`sequences` (prompt + answer), `nfe` (model forwards; a CFG pair counts once), optional canvas `history`,
    per-step `scores` / `logits` (B, W, V) of the scored columns `score_columns[i]` (rows already stopped: -inf),
    and with self-correction `remasked`: tokens re-masked per row."""

    sequences: torch.LongTensor | None = None
    nfe: int | None = None
    history: tuple[torch.LongTensor, ...] | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    score_columns: tuple[tuple[int, int], ...] | None = None
    remasked: torch.LongTensor | None = None


class DiffusionKVCache:
    """Keys/values (after RoPE) of the whole canvas, per layer, for Fast-dLLM-style prefix and dual caching.

    A refresh forward (query = the whole canvas) stores them. A cached forward runs only the query columns
    [start, end): their fresh keys/values are written in place and attention reads every column from the store, so
    columns outside the query use keys/values computed when the canvas was more masked (approximate by design).
    Positions are absolute canvas columns, so stored post-RoPE keys never need re-rotation.
    """

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.refresh, self.start, self.end = True, 0, None

    def begin(self, refresh: bool, start: int, end: int) -> None:
        self.refresh, self.start, self.end = refresh, start, end

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args) -> tuple[torch.Tensor, ...]:
        if self.refresh:
            self.keys[layer_idx], self.values[layer_idx] = key, value
            return key, value
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, self.start : self.end] = key
        values[:, :, self.start : self.end] = value
        return keys, values

    def select(self, index: torch.Tensor) -> None:
        """Keep only these batch rows (rows that finished early leave the batch)."""
        for layer_idx in self.keys:
            self.keys[layer_idx] = self.keys[layer_idx][index]
            self.values[layer_idx] = self.values[layer_idx][index]


# ---------------------------------------------------------------------------------------------------------------------
# The engine: per-call state, the step's inputs/outputs, and the sampler built once from the config


class BlockView(NamedTuple):
    """Static geometry of the steps of one block: columns run through the model, columns scored, block end."""

    query: tuple[int, int]
    window: tuple[int, int]
    block_end: int
    prompt_len: int
    k_max: int
    allow_remask: bool


class StepInput(NamedTuple):
    """Tensors of the active rows: canvas, padding mask, fixed columns; with self-correction the commit-time
    probabilities and the remask budget (else None)."""

    x: torch.Tensor
    attention_mask: torch.Tensor | None
    prompt_index: torch.Tensor
    committed: torch.Tensor | None
    budget: torch.Tensor | None


class StepOutput(NamedTuple):
    """The window's new tokens; with self-correction its commit probabilities, the remask budget and re-masked counts
    (else None); raw and processed logits."""

    x_window: torch.Tensor
    committed_window: torch.Tensor | None
    budget: torch.Tensor | None
    remasked: torch.Tensor | None
    logits: torch.Tensor
    scores: torch.Tensor


@dataclass
class DiffusionState:
    """Everything one generate() call carries from step to step (full-batch tensors; `rows` are still active)."""

    x: torch.Tensor
    attention_mask: torch.Tensor | None
    prompt_index: torch.Tensor
    prompt_len: int
    rows: torch.Tensor
    committed: torch.Tensor
    budget: torch.Tensor
    cache: DiffusionKVCache | None = None
    schedule: torch.Tensor | None = None
    extra: torch.Tensor | None = None  # tokens re-masked in the previous step, added to this step's count
    checked: list[int] = field(default_factory=list)  # stopping criteria: final-prefix length already checked
    budget_used: torch.Tensor | None = None  # tokens re-masked so far, per row
    nfe: int = 0
    history: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    logits: list = field(default_factory=list)
    score_columns: list = field(default_factory=list)

    def inputs(self, remask: bool) -> StepInput:
        """The active rows' tensors (the self-correction ones only when it is on: no work on the default path)."""
        rows = self.rows
        mask = self.attention_mask[rows] if self.attention_mask is not None else None
        committed, budget = (self.committed[rows], self.budget[rows]) if remask else (None, None)
        return StepInput(self.x[rows], mask, self.prompt_index[rows], committed, budget)


class DiffusionSampler:
    """The sampler parts, built once from the config: proposal (processors + argmax/Gumbel), confidence rule,
    selection rule, self-correction. `step()` is pure: tensors in, tensors out, no host synchronisation."""

    def __init__(self, model, config: LLaDAGenerationConfig, logits_processor=None, cache=None) -> None:
        self.model, self.config, self.cache = model, config, cache
        self.mask_id = config.mask_token_id
        self.temperature = _temperature(config)
        self.eos_ids = _as_list(config.eos_token_id)
        self.eot_ids = _as_list(config.eot_token_id)
        self.confidence_rule = CONFIDENCE_RULES[config.remasking]
        self.draws_scores = config.remasking == "random"
        self.user_processor_ids = {id(processor) for processor in logits_processor or []}
        self.processors = self._build_processors(config, logits_processor)
        self.warpers = self._build_warpers(config) if self.temperature > 0 else LogitsProcessorList()
        self.min_new_tokens = config.min_new_tokens or 0
        self.suppress_first = list(config.begin_suppress_tokens or [])
        self.remask = config.remask_budget > 0

    @staticmethod
    def _build_processors(config, user_processors) -> LogitsProcessorList:
        """The user's processors, then those the config's fields ask for (transformers appends the user's after its
        own): the fields' bans act last, so a user processor cannot lift them."""
        processors = LogitsProcessorList()
        if config.remove_invalid_values:
            processors.append(InfNanRemoveLogitsProcessor())
        processors.extend(user_processors or [])
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        bias = {tuple(ids): value for ids, value in _bias_items(config.sequence_bias)}
        for ids in config.bad_words_ids or []:
            bias[tuple(ids)] = -float("inf")
        if bias:
            processors.append(SequenceBiasLogitsProcessor(bias))
        if config.suppress_tokens:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
        return processors

    def _run_processors(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The processors in order; a user processor that changes the scores' shape, or leaves a position with NaN
        for every token (its argmax would silently be token 0), is named in the error."""
        for processor in self.processors:
            out = processor(input_ids, scores)
            if id(processor) in self.user_processor_ids:
                name = type(processor).__name__
                if not isinstance(out, torch.Tensor) or out.shape != scores.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(
                        f"logits_processor {name} returned scores of shape {got}; it must return the shape it was "
                        f"given, {tuple(scores.shape)} (one row per scored position, one column per vocabulary id)."
                    )
                if not torch.compiler.is_compiling() and bool(out.isnan().all(-1).any()):
                    raise ValueError(
                        f"logits_processor {name} returned NaN for every token of a position: there is nothing to "
                        "choose from (argmax would silently pick token 0). Return finite scores or -inf to ban tokens."
                    )
            scores = out
        return scores

    @staticmethod
    def _build_warpers(config) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if config.top_k is not None and config.top_k != 0:
            warpers.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(config.top_p))
        if config.min_p is not None:
            warpers.append(MinPLogitsWarper(config.min_p))
        if config.typical_p is not None and config.typical_p < 1.0:
            warpers.append(TypicalLogitsWarper(config.typical_p))
        if config.epsilon_cutoff:
            warpers.append(EpsilonLogitsWarper(config.epsilon_cutoff))
        if config.eta_cutoff:
            warpers.append(EtaLogitsWarper(config.eta_cutoff))
        return warpers

    def draw_noise(self, rows: int, length: int, view: BlockView, device, generator=None):
        """The official draws, in order and shape: fp64 Gumbel uniforms over the whole canvas (T > 0), then fp32
        `rand((B, L))` scores (random remasking); both windowed to the scored columns."""
        start, end = view.window
        uniform = scores = None
        if self.temperature > 0:
            shape = (rows, length, self.model.config.vocab_size)
            uniform = torch.rand(shape, dtype=torch.float64, device=device, generator=generator)[:, start:end]
        if self.draws_scores:
            scores = torch.rand((rows, length), device=device, generator=generator)[:, start:end]
        return uniform, scores

    def logits(self, inp: StepInput, view: BlockView) -> torch.Tensor:
        """One forward over the query columns (CFG: doubled batch), logits of the window's columns."""
        (q_start, q_end), (w_start, w_end) = view.query, view.window
        length = inp.x.shape[1]
        if self.cache is not None:
            self.cache.begin(refresh=view.query == (0, length), start=q_start, end=q_end)

        def forward(input_ids, attention_mask):
            return self.model(
                input_ids=input_ids.narrow(1, q_start, q_end - q_start),
                attention_mask=attention_mask,
                position_ids=torch.arange(q_start, q_end, device=input_ids.device)[None],
                past_key_values=self.cache,
                logits_to_keep=_columns(w_start - q_start, w_end - q_start, input_ids.device),
            ).logits

        cfg = self.config.cfg_scale
        uncond = torch.where(inp.prompt_index, self.mask_id, inp.x) if cfg > 0 else None
        return classifier_free_guidance(forward, inp.x, uncond, cfg, inp.attention_mask)

    def propose(self, logits: torch.Tensor, x: torch.Tensor, view: BlockView, uniform) -> tuple:
        """(x0, scores): EOS bans by column, the processors (canvas as `input_ids`), tempered warpers, then argmax or
        Gumbel-max. Without any of them `scores` is `logits` itself (the official path)."""
        start, end = view.window
        scores = logits
        columns = torch.arange(start, end, device=logits.device)
        ban_eos_until = x.shape[1] if self.config.suppress_eos_logits else view.prompt_len + self.min_new_tokens
        if self.eos_ids and ban_eos_until > start:
            banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            banned[self.eos_ids] = True
            scores = scores.masked_fill((columns < ban_eos_until)[:, None] & banned, -torch.inf)
        if self.suppress_first and start <= view.prompt_len < end:
            first = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            first[self.suppress_first] = True
            scores = scores.masked_fill((columns == view.prompt_len)[:, None] & first, -torch.inf)
        if self.processors or self.warpers:
            batch, width, vocab = scores.shape
            flat_ids = x.repeat_interleave(width, dim=0)
            flat = self._run_processors(flat_ids, scores.reshape(batch * width, vocab))
            if self.warpers:  # decided on the tempered distribution, as transformers orders them
                kept = self.warpers(flat_ids, flat / self.temperature) > -torch.inf
                flat = flat.masked_fill(~kept, -torch.inf)
            scores = flat.reshape(batch, width, vocab)
        return sample_tokens(scores, self.temperature, uniform), scores

    def confidence(self, scores: torch.Tensor, x0: torch.Tensor, random_scores) -> torch.Tensor:
        """The confidence rule on the un-noised proposal, with the EOS ranking option."""
        if self.config.suppress_eos_confidence == "official":
            # Official quirk: at T > 0 only the EoT column of the logits is cleared, at T = 0 EOS and EoT.
            cleared = self.eot_ids if self.temperature > 0 else [*self.eos_ids, *self.eot_ids]
            scores = scores.clone()
            scores[:, :, cleared] = -torch.inf
        confidence = self.confidence_rule(scores, x0, random_scores)
        if self.config.suppress_eos_confidence == "rank_last":
            is_eos = torch.isin(x0, torch.tensor([*self.eos_ids, *self.eot_ids], device=x0.device))
            confidence = torch.where(is_eos, confidence.float() - 1e4, confidence.float())
        return confidence

    def select(self, confidence: torch.Tensor, k: int | torch.Tensor | None, view: BlockView, length: int):
        """The selection rule; the fixed schedule ranks the full canvas row, as the official per-row `topk` does."""
        selection = self.config.selection
        if selection == "threshold":
            return select_threshold(confidence, self.config.threshold)
        if selection == "factor":
            return select_factor(confidence, self.config.factor)
        start, end = view.window
        if (start, end) == (0, length):
            return select_topk(confidence, k, view.k_max)
        full = F.pad(confidence, (start, length - end), value=-torch.inf)
        return select_topk(full, k, view.k_max).narrow(1, start, end - start)

    def step(self, inp: StepInput, k: int | torch.Tensor | None, noise: tuple, view: BlockView) -> StepOutput:
        """One denoising step on the window: forward, propose, score, select, commit, remask (steps 3a-3f)."""
        start, end = view.window
        uniform, random_scores = noise
        # 3a. forward
        logits = self.logits(inp, view)
        x_window = inp.x.narrow(1, start, end - start)
        # 3b. propose
        x0, scores = self.propose(logits, inp.x, view, uniform)
        # 3c. score: only the block's masked columns are candidates
        confidence = self.confidence(scores, x0, random_scores)
        columns = torch.arange(start, end, device=x0.device)
        is_mask = x_window == self.mask_id
        confidence = torch.where(is_mask & (columns < view.block_end)[None, :], confidence, -torch.inf)
        x0 = torch.where(is_mask, x0, x_window)
        # 3d. select
        transfer = self.select(confidence, k, view, inp.x.shape[1])
        # 3e. commit
        new_window = torch.where(transfer, x0, x_window)
        # 3f. remask (self-correction): earlier commits of this block whose probability when committed was low go
        # back to mask (the probability under the proposal, whatever rule ordered the commits)
        if not self.remask:
            return StepOutput(new_window, None, None, None, logits, scores)
        committed = inp.committed.narrow(1, start, end - start)
        committed = torch.where(transfer, low_confidence(scores, x0).float(), committed)
        budget, remasked = inp.budget, torch.zeros_like(inp.budget)
        if view.allow_remask:
            earlier = (~transfer) & (new_window != self.mask_id) & ~inp.prompt_index.narrow(1, start, end - start)
            earlier &= (columns < view.block_end)[None, :] & (columns >= view.prompt_len)[None, :]
            doubtful = torch.where(earlier & (committed < self.config.remask_threshold), -committed, -torch.inf)
            count = (doubtful > -torch.inf).sum(-1).minimum(budget).clamp(max=self.config.remask_per_step)
            k_remask = min(self.config.remask_per_step, end - start)
            chosen = select_topk(doubtful, count, k_remask) & (doubtful > -torch.inf)
            new_window = torch.where(chosen, self.mask_id, new_window)
            committed = torch.where(chosen, torch.inf, committed)
            remasked = chosen.sum(-1)
            budget = budget - remasked
        return StepOutput(new_window, committed, budget, remasked, logits, scores)


# ---------------------------------------------------------------------------------------------------------------------
# The mixin


class DiffusionGenerationMixin:
    """Adds the masked-diffusion `generate()` (the name must end in `GenerationMixin`: transformers keys
    `can_generate()`, the generation config and pipeline support on it).

    Strategy hooks for model families (e.g. LLaDA2 in `generation_llada2.py`): `diffusion_config_class`,
    `diffusion_sampler_class`, the `_check_diffusion_inputs` / `_plan_block` / `_block_open` / `_stop_rows` helpers
    and `_diffusion_sequences` (the returned sequences)."""

    diffusion_config_class = LLaDAGenerationConfig
    diffusion_sampler_class = DiffusionSampler

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             cache_dir, force_download, proxies, local_files_only, token, revision, subfolder,
                             trust_remote_code, **kwargs):  # fmt: skip
        """Load `generation_config.json` as `LLaDAGenerationConfig` (the base version loads a plain one)."""
        if generation_config is not None:
            self.generation_config = self.diffusion_config_class.from_dict(generation_config.to_dict())
        elif pretrained_model_name_or_path is not None:
            try:
                self.generation_config = self.diffusion_config_class.from_pretrained(
                    pretrained_model_name_or_path,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    proxies=proxies,
                    local_files_only=local_files_only,
                    token=token,
                    revision=revision,
                    subfolder=subfolder,
                    _from_auto=from_auto_class,
                    _from_pipeline=from_pipeline,
                )
            except OSError as error:
                # A missing file keeps the config built from the model config; an unreadable one is not ignored
                # (the model would silently sample with default settings instead of the checkpoint's).
                if isinstance(error.__context__, (json.JSONDecodeError, UnicodeDecodeError)):
                    raise ValueError(
                        f"generation_config.json could not be read: {error} ({error.__context__})"
                    ) from None

    def _diffusion_device(self, input_ids) -> torch.device:
        """Where the canvas lives: the embedding's device, or, if accelerate offloaded it (weight on meta), the device
        its hook computes on, so a GPU + CPU/disk map samples on the GPU (never `self.device`: it can be meta)."""
        embeddings = self.get_input_embeddings()
        device = embeddings.weight.device
        if device.type != "meta":
            return device
        execution_device = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
        if execution_device is not None:
            return torch.device(execution_device)
        return input_ids.device if isinstance(input_ids, torch.Tensor) else torch.device("cpu")

    def _prepare_diffusion_config(self, generation_config, kwargs: dict) -> LLaDAGenerationConfig:
        """kwargs > passed config > model's generation config; special ids the config leaves unset come from the
        model config; the official-style `temperature=t` alone implies sampling."""
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}.")
        base = generation_config if generation_config is not None else self.generation_config
        config = copy.deepcopy(base)
        if not isinstance(config, self.diffusion_config_class):
            config = self.diffusion_config_class.from_dict(config.to_dict())
        if kwargs.get("temperature") and "do_sample" not in kwargs:
            kwargs["do_sample"] = True
        if kwargs.get("infill") and "max_new_tokens" not in kwargs and "max_length" not in kwargs:
            kwargs["max_new_tokens"] = 0  # infilling means the masks the user placed
        if kwargs.get("max_length") is not None and kwargs.get("max_new_tokens") is None:
            config.max_new_tokens = None  # resolved against the prompt length in generate()
        elif kwargs.get("max_length") is not None and kwargs.get("max_new_tokens") is not None:
            warnings.warn("Both max_new_tokens and max_length are set; max_new_tokens takes precedence.", stacklevel=3)
        steps_per_token = None
        if generation_config is None and "steps" not in kwargs and base.steps and base.max_new_tokens:
            if any(kwargs.get(name) is not None for name in ("max_new_tokens", "max_length")):
                # The canvas is the user's (or the infill masks), the steps the checkpoint's: keep its tokens per step
                steps_per_token = base.steps / base.max_new_tokens
        unused = config.update(**kwargs)
        config._steps_per_token = steps_per_token
        unused.pop("tokenizer", None)  # the pipeline passes it along; stop_strings use it
        for name in REJECTED_KWARGS:
            unused.pop(name, None)
        unused.pop("synced_gpus", None)
        if unused:
            raise ValueError(f"generate() got unexpected arguments: {sorted(unused)}.")
        model_config = self.config
        vocab = model_config.vocab_size
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "eot_token_id"):
            if getattr(config, name, None) is None:
                setattr(config, name, getattr(model_config, name, None))
        if config.eot_token_id is None and vocab == LLADA_8B_VOCAB and config.mask_token_id == LLADA_8B_MASK:
            config.eot_token_id = LLADA_8B_EOT  # the 8B checkpoints' `<|eot_id|>` (not in their config.json)
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "eot_token_id"):
            for token in _as_list(getattr(config, name, None)):
                if not isinstance(token, int) or not 0 <= token < vocab:
                    raise ValueError(f"{name} {token!r} is outside the model's vocabulary [0, {vocab}).")
        check_contract(config, kwargs)  # first: the base validate() would only warn that such flags "may be ignored"
        config.validate()
        if not config.do_sample:
            unused = [name for name in SAMPLING_FILTERS if _filter_is_set(config, name)]
            if unused:
                warnings.warn(
                    f"{', '.join(unused)} only filter sampled proposals; with do_sample=False (greedy, as in "
                    "transformers) they have no effect. Pass do_sample=True (or temperature > 0) to use them.",
                    stacklevel=3,
                )
        return config

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: LLaDAGenerationConfig | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        generator: torch.Generator | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor | DiffusionGenerateOutput:
        """Fill `max_new_tokens` masks after the prompt by iterative unmasking; returns prompt + answer.

        1. Prepare: merge kwargs into the config, check the contract and the inputs (before any allocation), build
           the canvas (prompt + masks), the state and the sampler (proposal, confidence, selection, remasking).
        2. Per block: plan the commit counts (the official schedule, or a threshold/factor rule).
        3. Per step: a. forward; b. propose (processors, argmax or Gumbel); c. score (confidence rule);
           d. select; e. commit; f. remask low-confidence commits (self-correction, opt-in);
           g. stop rows that are final (EOS early stop, stopping criteria, stop strings).
        4. Return the canvas (or a `DiffusionGenerateOutput`).

        Inputs may be left-padded (with `attention_mask`); right-padded rows are moved to the left (warned). With
        `infill=True`, mask tokens inside `inputs` are filled too and everything else stays fixed. `generator`
        replaces the global RNG; `logits_processor` sees the current canvas as `input_ids` and the scored columns'
        logits as rows; `stopping_criteria` / `stop_strings` are checked on the final prefix of each row.
        """
        # 1. Prepare
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        tokenizer = kwargs.get("tokenizer")
        config = self._prepare_diffusion_config(generation_config, kwargs)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        device = self._diffusion_device(input_ids)
        input_ids, attention_mask = _check_ids(input_ids, attention_mask, device)
        if config.num_return_sequences and config.num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
        prompt_len = input_ids.shape[1]
        if config.max_new_tokens is None:
            config.max_new_tokens = config.max_length - prompt_len
            if config.max_new_tokens < 0 or (config.max_new_tokens == 0 and not config.infill):
                raise ValueError(f"max_length ({config.max_length}) must exceed the prompt length ({prompt_len}).")
        if config.min_length:
            config.min_new_tokens = max(config.min_new_tokens or 0, config.min_length - prompt_len)
        if config.min_new_tokens and config.min_new_tokens > config.max_new_tokens:
            raise ValueError(f"min_new_tokens ({config.min_new_tokens}) > max_new_tokens ({config.max_new_tokens}).")
        self._check_size(input_ids.shape[0], prompt_len + config.max_new_tokens, config, device)
        input_ids, attention_mask = self._left_pad(input_ids, attention_mask)
        plan = self._check_diffusion_inputs(input_ids, attention_mask, config)
        criteria = StoppingCriteriaList(stopping_criteria or [])
        if config.stop_strings:
            if tokenizer is None:
                raise ValueError("stop_strings needs the tokenizer: generate(..., tokenizer=tokenizer).")
            criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
        gen_len, length, mask_id = config.max_new_tokens, prompt_len + config.max_new_tokens, config.mask_token_id

        x = F.pad(input_ids, (0, gen_len), value=mask_id)
        if attention_mask is not None:
            attention_mask = None if bool(attention_mask.all()) else F.pad(attention_mask, (0, gen_len), value=1)
        batch = x.shape[0]
        state = DiffusionState(
            x=x,
            attention_mask=attention_mask,
            prompt_index=x != mask_id,
            prompt_len=prompt_len,
            rows=torch.arange(batch, device=device),
            committed=torch.full(x.shape, torch.inf, device=device),
            budget=torch.zeros(batch, dtype=torch.long, device=device),
            budget_used=torch.zeros(batch, dtype=torch.long, device=device),
            cache=DiffusionKVCache() if config.cache != "none" else None,
            checked=[0] * batch,
        )
        sampler = self.diffusion_sampler_class(self, config, logits_processor, state.cache)
        step_fn = self._compiled_step(config.compile) if config.compile else type(sampler).step
        self.model.rotary_emb.ensure_length(length)  # steps pass explicit positions: the tables cover the canvas
        max_pos = getattr(self.config, "max_position_embeddings", None)
        if max_pos and length > max_pos:
            warnings.warn(
                f"The canvas ({length} tokens) is longer than max_position_embeddings ({max_pos}); RoPE is extended "
                "beyond the trained length.",
                stacklevel=2,
            )
        stream = _Stream(streamer, input_ids, prompt_len, mask_id) if streamer is not None else None

        for block_start, block_end, steps in plan:
            if state.rows.numel() == 0:
                break
            # 2. Plan the block
            view, schedule = self._plan_block(state, config, block_start, block_end, steps, length)
            state.budget[state.rows] = config.remask_budget
            state.extra = torch.zeros_like(state.rows)
            step = 0
            while self._block_open(state, config, block_end, step, steps):
                # 3a-f. One step on the active rows
                rows = state.rows
                if state.cache is not None:
                    query = (
                        (0, length) if step == 0 else (block_start, length if config.cache == "prefix" else block_end)
                    )
                    view = view._replace(query=query)
                last = config.selection == "schedule" and step == steps - 1
                view = view._replace(allow_remask=not last)
                k = None
                if schedule is not None:  # one count for every row (host int), or per row (device tensor)
                    k = schedule[step] if isinstance(schedule, list) else schedule[:, step] + state.extra
                noise = sampler.draw_noise(rows.numel(), length, view, device, generator)
                out = step_fn(sampler, state.inputs(sampler.remask), k, noise, view)
                start, end = view.window
                state.x[rows, start:end] = out.x_window
                if out.remasked is not None:  # self-correction's bookkeeping
                    state.committed[rows, start:end] = out.committed_window
                    state.budget[rows] = out.budget
                    state.extra = out.remasked
                    state.budget_used[rows] += out.remasked
                state.nfe += 1
                step += 1
                self._record(state, config, out, view, batch)
                if stream is not None:
                    stream.update(state.x)
                # 3g. Stop rows that are final
                schedule = self._stop_rows(state, config, criteria, schedule)
                if state.rows.numel() == 0:
                    break

        # 4. Return
        if stream is not None:
            stream.finish(state.x)
        sequences = self._diffusion_sequences(state, config)
        if config.return_dict_in_generate:
            return DiffusionGenerateOutput(
                sequences=sequences,
                nfe=state.nfe,
                history=tuple(state.history) if state.history else None,
                scores=tuple(state.scores) if config.output_scores else None,
                logits=tuple(state.logits) if config.output_logits else None,
                score_columns=tuple(state.score_columns) if state.score_columns else None,
                remasked=state.budget_used if config.remask_budget else None,
            )
        return sequences

    # -- generate()'s helpers, in the order it calls them ------------------------------------------------------------

    def _diffusion_sequences(self, state, config) -> torch.LongTensor:
        """What generate() returns: the whole canvas (prompt + answer)."""
        return state.x

    def _left_pad(self, input_ids, attention_mask):
        """(ids, mask), with right-padded rows moved to the left-padded layout (warned)."""
        if attention_mask is None or input_ids.shape[1] == 0:
            return input_ids, attention_mask
        mask = attention_mask.bool()
        right_padded = (mask[:, :-1] & ~mask[:, 1:]).any(-1)
        if not bool(right_padded.any()):
            return input_ids, attention_mask
        if bool(((~mask[:, :-1]) & mask[:, 1:] & right_padded[:, None]).any()):
            raise ValueError("attention_mask has padding inside the prompt; pad on the left (padding_side='left').")
        warnings.warn(
            "Right padding detected: the prompts are moved to the left-padded layout (the output's prompt columns are "
            "left-padded). Use tokenizer.padding_side = 'left' to avoid this.",
            stacklevel=3,
        )
        shift = (~mask).sum(-1, keepdim=True)
        index = (torch.arange(mask.shape[1], device=mask.device)[None, :] - shift) % mask.shape[1]
        return input_ids.gather(1, index), attention_mask.gather(1, index)

    def _check_size(self, batch: int, length: int, config, device) -> None:
        """Refuse a request whose one step cannot fit in memory, before allocating anything."""
        window = (config.block_length or config.max_new_tokens) if config.fast or config.cache != "none" else length
        sampling, cfg = _temperature(config) > 0, config.cfg_scale > 0
        needed = estimate_step_bytes(batch, length, min(window, length), self.config.vocab_size, sampling, cfg)
        available = _available_bytes(device)
        if available is not None and needed > available:
            raise ValueError(
                f"The request needs about {needed / 2**30:.1f} GiB per step (batch {batch}, canvas {length}), more "
                f"than {device} has ({available / 2**30:.1f} GiB): lower max_new_tokens or the batch size."
            )

    def _plan_block(self, state, config, block_start, block_end, steps, length):
        """The block's static geometry and, for the fixed rule, its commit counts: a host list when every row
        commits the same number (the official case: no sync, one batched `topk`), else a (B_active, steps) tensor."""
        window = (block_start, block_end) if config.fast or config.cache != "none" else (0, length)
        schedule, k_max = None, 0
        if config.selection == "schedule":
            if config.infill:  # masks inside the prompt count too: one device sync per block
                counts = (state.x[state.rows, :block_end] == config.mask_token_id).sum(-1)
                k_max = -(-int(counts.max()) // steps) if counts.numel() else 0
                schedule = transfer_schedule(counts, steps)
            else:  # the block is all masks: known on the host
                schedule = transfer_schedule(torch.tensor([block_end - block_start]), steps)[0].tolist()
                k_max = schedule[0]
            if config.remask_budget:  # counts grow by what the previous step re-masked: per row
                if isinstance(schedule, list):
                    schedule = torch.tensor(schedule, device=state.x.device).expand(state.rows.numel(), -1)
                k_max += config.remask_per_step
            k_max = min(k_max, length)
        view = BlockView(
            query=(0, length), window=window, block_end=block_end, prompt_len=state.prompt_len, k_max=k_max,
            allow_remask=True,
        )  # fmt: skip
        return view, schedule

    @staticmethod
    def _block_open(state, config, block_end, step, steps) -> bool:
        """Fixed schedule: `steps` steps. Threshold/factor: until the block has no mask (one sync per step)."""
        if config.selection == "schedule":
            return step < steps
        return bool((state.x[state.rows, :block_end] == config.mask_token_id).any())

    @staticmethod
    def _record(state, config, out: StepOutput, view: BlockView, batch: int) -> None:
        if config.output_history:
            state.history.append(state.x.clone())
        if not (config.output_scores or config.output_logits):
            return
        state.score_columns.append(view.window)
        for wanted, values, store in ((config.output_scores, out.scores, state.scores),
                                      (config.output_logits, out.logits, state.logits)):  # fmt: skip
            if wanted:
                full = values.new_full((batch, *values.shape[1:]), -torch.inf)
                full[state.rows] = values
                store.append(full)

    def _stop_rows(self, state, config, criteria, schedule):
        """Rows whose answer is final stop spending forwards; their remaining columns become EOS.

        A row is final when its answer has no mask before its first EOS (`early_stop`), or when a stopping
        criterion fires on its final prefix (the part with no mask before it); the columns after the prefix that
        fired become EOS.
        """
        if not (config.early_stop or criteria):
            return schedule
        eos = _as_list(config.eos_token_id)
        if not eos:
            raise ValueError("early_stop and stopping criteria need eos_token_id (the filler of stopped rows).")
        rows, prompt_len, mask_id = state.rows, state.prompt_len, config.mask_token_id
        answer = state.x[rows, prompt_len:]
        positions = torch.arange(answer.shape[1], device=answer.device)
        is_mask = answer == mask_id
        first_mask = torch.where(is_mask, positions, answer.shape[1]).min(-1).values
        cut = torch.full_like(first_mask, -1)  # answer length kept; -1 = row goes on
        if config.early_stop:
            is_eos = torch.isin(answer, torch.tensor(eos, device=answer.device))
            first_eos = torch.where(is_eos, positions, answer.shape[1]).min(-1).values
            cut = torch.where(is_eos.any(-1) & (first_eos < first_mask), answer.shape[1], cut)
        if criteria:
            final = first_mask.tolist()
            for i, row in enumerate(rows.tolist()):
                if int(cut[i]) >= 0:
                    continue
                for n in range(state.checked[row] + 1, final[i] + 1):
                    if bool(criteria(state.x[row : row + 1, : prompt_len + n], None).any()):
                        cut[i] = n
                        break
                state.checked[row] = final[i]
        finished = cut >= 0
        if not bool(finished.any()):
            return schedule
        done, cut = rows[finished], cut[finished]
        tail = positions[None, :] >= cut[:, None]
        answer_done = state.x[done, prompt_len:]
        answer_done = torch.where(tail | (answer_done == mask_id), eos[0], answer_done)
        state.x[done, prompt_len:] = answer_done
        keep = ~finished
        if state.cache is not None and state.cache.keys:
            kept = keep.nonzero().flatten()
            cache_rows = next(iter(state.cache.keys.values())).shape[0]
            state.cache.select(torch.cat([kept, kept + len(keep)]) if cache_rows == 2 * len(keep) else kept)
        state.rows = rows[keep]
        state.extra = state.extra[keep]
        return schedule[keep] if isinstance(schedule, torch.Tensor) else schedule

    def _compiled_step(self, mode):
        """The whole step compiled once per model and mode: `fullgraph=True` (a graph break is an error),
        `dynamic=True` (one graph for every block offset and batch size; each sampler configuration compiles once)."""
        compiled = getattr(self, "_llada_compiled_steps", None)
        if compiled is None:
            compiled = self._llada_compiled_steps = {}
        if mode not in compiled:
            options = {} if mode in (True, "default") else {"mode": mode}
            step = torch.compile(DiffusionSampler.step, fullgraph=True, dynamic=True, **options)

            graphs = mode == "reduce-overhead"

            def run(*args):
                with torch._dynamo.config.patch(recompile_limit=64):  # several sampler configurations per model
                    if graphs:  # CUDA graphs reuse their output buffers: mark each step, keep copies
                        torch.compiler.cudagraph_mark_step_begin()
                        return StepOutput(*(t.clone() if t is not None else None for t in step(*args)))
                    return step(*args)

            compiled[mode] = run
        return compiled[mode]

    def _check_diffusion_inputs(self, input_ids, attention_mask, config) -> list[tuple[int, int, int]]:
        """Validate the request; return the block plan [(first_candidate_column, block_end, steps), ...]."""
        mask_id = config.mask_token_id
        if mask_id is None:
            raise ValueError("mask_token_id is set neither in the generation config nor in the model config.")
        vocab = self.config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab}).")
        if config.pad_token_id is not None and config.pad_token_id == mask_id:
            raise ValueError(f"pad_token_id equals mask_token_id ({mask_id}): padding would be generated over.")
        prompt_masks = input_ids == mask_id
        if attention_mask is not None:
            prompt_masks &= attention_mask.bool()
        n_prompt_masks = prompt_masks.sum(-1)
        if bool(n_prompt_masks.any()) and not config.infill:
            raise ValueError(
                f"The prompt contains the mask token {mask_id}; pass infill=True to fill masks inside the input."
            )
        if config.infill and config.cache != "none":
            raise ValueError("cache is not supported with infill=True (prompt masks would need fresh keys).")
        if config.cfg_scale > 0 and input_ids.shape[1] == 0:
            raise ValueError("cfg_scale > 0 needs a prompt: the unconditional branch masks the prompt.")
        gen_len = config.max_new_tokens
        prompt_len = input_ids.shape[1]
        if gen_len == 0:
            n_masks = int(n_prompt_masks.max()) if n_prompt_masks.numel() else 0
            if n_masks == 0:
                raise ValueError("Nothing to generate: max_new_tokens is 0 and the input has no mask tokens.")
            steps = config.steps or n_masks
            if getattr(config, "_steps_per_token", None):
                steps = scaled_steps(config._steps_per_token, n_masks, 1)
            if config.selection == "schedule" and steps > n_masks:
                raise ValueError(f"steps ({steps}) > masks to fill ({n_masks}): some steps would commit nothing.")
            return [(0, prompt_len, steps)]
        block_length = config.block_length or gen_len
        if gen_len % block_length:
            raise ValueError(f"max_new_tokens ({gen_len}) must be divisible by block_length ({block_length}).")
        num_blocks = gen_len // block_length
        steps = config.steps or gen_len
        if getattr(config, "_steps_per_token", None):
            steps = scaled_steps(config._steps_per_token, gen_len, num_blocks)
        if config.selection == "schedule":
            if steps > gen_len:
                raise ValueError(f"steps ({steps}) > max_new_tokens ({gen_len}): some steps would commit nothing.")
            if steps % num_blocks:
                raise ValueError(f"steps ({steps}) must be divisible by the number of blocks ({num_blocks}).")
        first = 0 if config.infill else prompt_len  # prompt masks are candidates in every block
        blocks = [(prompt_len + b * block_length, prompt_len + (b + 1) * block_length) for b in range(num_blocks)]
        return [
            (first if b == 0 else start, end, max(steps // num_blocks, 1)) for b, (start, end) in enumerate(blocks)
        ]


def scaled_steps(steps_per_token: float, tokens: int, num_blocks: int) -> int:
    """Steps for a `tokens`-long canvas at a checkpoint's `steps_per_token`: the nearest multiple of `num_blocks`
    (half up) between `num_blocks` and `tokens`, so every block gets the same number of steps, each committing one
    token or more."""
    per_block = math.floor(tokens * steps_per_token / num_blocks + 0.5)
    return num_blocks * min(max(per_block, 1), tokens // num_blocks)


def _check_ids(input_ids, attention_mask, device):
    """Accept what transformers accepts (any integer dtype, 1-D = one row); name the argument otherwise."""
    if input_ids is None:
        input_ids = torch.empty((1, 0), dtype=torch.long, device=device)
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"input_ids must be a torch.LongTensor, got {type(input_ids).__name__}; "
            "use tokenizer(..., return_tensors='pt')."
        )
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}.")
    input_ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}.")
        if attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}."
            )
        if attention_mask.numel() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)][0].item()
            raise ValueError(f"attention_mask must hold 0/1 values (1: token, 0: padding), got {bad}.")
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
    return input_ids, attention_mask


def _columns(start: int, end: int, device) -> slice | torch.Tensor:
    """Columns whose logits are kept: a slice (a view) in eager mode; an index tensor under torch.compile, where a
    slice would make dynamo specialise on the block's offsets and recompile for every block."""
    return torch.arange(start, end, device=device) if torch.compiler.is_compiling() else slice(start, end)


def _temperature(config) -> float:
    """Sampling temperature: 0 (greedy) unless do_sample; transformers' default 1.0 when sampling without one."""
    if not config.do_sample:
        return 0.0
    return float(config.temperature) if config.temperature is not None else 1.0


def _as_list(token_ids) -> list[int]:
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


class _Stream:
    """Feeds a transformers streamer: the prompt first, then each newly final prefix (no mask before it)."""

    def __init__(self, streamer, input_ids: torch.LongTensor, prompt_len: int, mask_id: int) -> None:
        if input_ids.shape[0] != 1:
            raise ValueError("Streaming supports batch size 1 only.")
        self.streamer, self.prompt_len, self.mask_id, self.sent = streamer, prompt_len, mask_id, 0
        streamer.put(input_ids.cpu())

    def update(self, x: torch.LongTensor, draft: bool = True) -> None:
        answer = x[0, self.prompt_len :]
        masked = (answer == self.mask_id).nonzero()
        final = int(masked[0]) if masked.numel() else answer.shape[0]
        if draft and hasattr(self.streamer, "put_draft"):
            self.streamer.put_draft(answer.cpu())
        if final > self.sent:
            self.streamer.put(answer[self.sent : final].cpu())
            self.sent = final

    def finish(self, x: torch.LongTensor) -> None:
        self.update(x, draft=False)
        self.streamer.end()


__all__ = [
    "CONFIDENCE_RULES",
    "HONOURED_FIELDS",
    "REJECTED_FIELDS",
    "DiffusionGenerateOutput",
    "DiffusionGenerationMixin",
    "DiffusionSampler",
    "DiffusionState",
    "LLaDAGenerationConfig",
    "classifier_free_guidance",
    "sample_tokens",
    "select_factor",
    "select_threshold",
    "select_topk",
    "transfer_schedule",
]
