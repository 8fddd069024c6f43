"""Generation config and the generate() contract: `LLaDAGenerationConfig` (whose `sampler_parts()` chooses the
sampler's parts), the honoured / rejected field tables and the checks that name every unsupported option."""

import math
import warnings

import torch
from transformers.generation.configuration_utils import GenerationConfig

from .generation_layout import RelativeBlocks
from .generation_parts import (
    CONFIDENCE_RULES,
    Confidence,
    EosStop,
    FactorSelection,
    Proposal,
    RemaskRevision,
    SamplerParts,
    ScheduleSelection,
    ThresholdSelection,
    _bias_items,
    canvas,
)

#: Every `GenerationConfig` field with a diffusion meaning (the README's option table says what each does).
HONOURED_FIELDS = {
    "max_length": "prompt + new tokens; `max_new_tokens` wins when both are given",
    "max_new_tokens": "length of the canvas after the prompt",
    "min_length": "as `min_new_tokens`, counted from the start of the prompt",
    "min_new_tokens": "EOS cannot be proposed in the first `min_new_tokens` answer columns",
    "do_sample": "Gumbel-max sampling of each masked position (else argmax)",
    "temperature": "sampling temperature (official fp64 Gumbel noise); 0 = greedy",
    "top_k": "proposal keeps the k most likely tokens (sampling only, as in transformers)",
    **dict.fromkeys(
        ("top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"), "filter of the tempered proposal"
    ),
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
    **dict.fromkeys(("num_beam_groups", "diversity_penalty"), "group beam search has no diffusion counterpart"),
    **dict.fromkeys(("constraints", "force_words_ids"), "constrained beam search has no diffusion counterpart"),
    "penalty_alpha": "contrastive search has no diffusion counterpart",
    "dola_layers": "DoLa decoding has no diffusion counterpart",
    "guidance_scale": "use cfg_scale (= guidance_scale - 1, the official LLaDA parameter)",
    "no_repeat_ngram_size": "n-gram bans depend on left-to-right order; a diffusion canvas is filled out of order",
    **dict.fromkeys(("encoder_no_repeat_ngram_size", "encoder_repetition_penalty"), "no encoder"),
    "forced_bos_token_id": "put the token in the prompt",
    "forced_eos_token_id": "use early_stop / stop_strings",
    "exponential_decay_length_penalty": "an autoregressive length rule",
    "max_time": "a canvas stopped mid-way still holds masks",
    "token_healing": "an autoregressive prompt repair",
    "watermarking_config": "watermarking assumes left-to-right generation",
    **dict.fromkeys(("output_attentions", "output_hidden_states"), "not collected by the sampler"),
    **dict.fromkeys(("cache_implementation", "cache_config", "max_cache_len"), "use cache='prefix' or 'dual'"),
    "compile_config": "use compile=True or a torch.compile mode name",
    "disable_compile": "use compile=False",
    "prefill_chunk_size": "no autoregressive prefill",
    "low_memory": "a beam/contrastive search option",
    "use_mtp": "no multi-token-prediction heads",
    "continuous_batching_config": "continuous batching is autoregressive",
    "decoder_start_token_id": "no decoder start token",
    **dict.fromkeys(
        (
            "is_assistant",
            "num_assistant_tokens",
            "num_assistant_tokens_schedule",
            "assistant_confidence_threshold",
            "assistant_early_exit",
            "assistant_lookbehind",
            "target_lookbehind",
            "assistant_ensemble_weight",
        ),
        "assisted decoding is autoregressive",
    ),
    **dict.fromkeys(
        ("prompt_lookup_num_tokens", "max_matching_ngram_size"), "prompt-lookup decoding is autoregressive"
    ),
    "speculation_type": "speculative decoding is autoregressive",
    "top_h": "not implemented for the diffusion proposal",
}

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

    _diffusion_defaults = dict(
        steps=None, block_length=None, remasking="low_confidence", cfg_scale=0.0, threshold=None, factor=None,
        remask_budget=0, remask_threshold=0.9, remask_per_step=1, mask_token_id=None, eot_token_id=None,
        suppress_eos_logits=False, suppress_eos_confidence=None, early_stop=False, infill=False, output_history=False,
        fast=True, cache="none", compile=False,
    )  # fmt: skip

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

    def sampler_parts(self, logits_processor=None, stopping_criteria=None) -> SamplerParts:
        """The LLaDA sampler: relative blocks, processors + argmax/fp64 Gumbel, the `remasking` rule, the official
        schedule (or threshold/factor), ReMDM re-masking, EOS early stop / criteria, the whole canvas returned."""
        selection = {"schedule": ScheduleSelection, "threshold": ThresholdSelection, "factor": FactorSelection}
        revision = RemaskRevision(self) if self.remask_budget else None
        extra = self.remask_per_step if revision is not None else 0
        return SamplerParts(
            layout=RelativeBlocks(self),
            proposal=Proposal(self, logits_processor),
            confidence=Confidence(self),
            selection=selection[self.selection](self, extra),
            revision=revision,
            stopping=EosStop(self, stopping_criteria),
            finalise=canvas,
        )


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


def check_ids(input_ids, attention_mask, device):
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


def left_pad(input_ids, attention_mask):
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
