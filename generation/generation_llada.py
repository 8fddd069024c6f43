"""Masked-diffusion generation for LLaDA: `LLaDAGenerationConfig` and `DiffusionGenerationMixin.generate()`.

The sampler follows the official ML-GSAI `generate.py`: a canvas of `max_new_tokens` mask tokens after the prompt is
filled block by block (semi-autoregressive); each step predicts every position with one bidirectional forward and
commits the most confident masked predictions of the current block. The number committed per step is the official
schedule, random numbers are drawn in the official order, shapes and dtypes, so greedy and seeded CPU runs reproduce
the official tokens exactly. Everything beyond the official sampler (threshold decoding, EOS early stop, infilling,
margin/entropy confidences, streaming) is opt-in.
"""

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.generation.configuration_utils import GenerationConfig
from transformers.utils import ModelOutput

# ---------------------------------------------------------------------------------------------------------------------
# Configuration


class LLaDAGenerationConfig(GenerationConfig):
    """`GenerationConfig` with the diffusion sampler's fields; saved as `generation_config.json`.

    Args:
        steps: denoising steps (= forwards) for the whole canvas; `None` means one token per step.
        block_length: semi-autoregressive block size; `None` means one block spanning `max_new_tokens`.
        remasking: confidence rule deciding which predictions are committed: one of `CONFIDENCE_RULES`.
        cfg_scale: classifier-free guidance scale (0 = off); the unconditional branch masks the prompt.
        threshold: confidence-threshold parallel decoding: commit every masked token of the block whose confidence is
            >= threshold (at least one per step); the fixed schedule is then not used.
        mask_token_id / eot_token_id: the `<|mdm_mask|>` and `<|eot_id|>` ids.
        suppress_eos_logits: forbid EOS (`logits_eos_inf` of the official sampler).
        suppress_eos_confidence: `None`, `"official"` (the official `confidence_eos_eot_inf`, bug for bug) or
            `"rank_last"` (what it intends: EOS/EoT predictions are committed only after every other candidate).
        early_stop: per row, stop spending forwards once its answer is final up to the first EOS (rest: EOS).
        infill: allow mask tokens inside the prompt; they are filled too (in the first block's steps).
        output_history: with `return_dict_in_generate`, keep the canvas after every step.
        fast: compute logits, sampling and confidences only on the current block's columns (the only candidates),
            drawing random numbers in the official shapes; `False` runs the literal official computation.
        cache: `"none"`, `"prefix"` or `"dual"` (Fast-dLLM KV caching, approximate by design): each block starts with
            a full forward that caches keys/values; later steps recompute only the block and what follows it
            (`"prefix"`) or only the block (`"dual"`), reading the other columns from the cache.
        compile: run the transformer body through `torch.compile`.
    """

    _diffusion_defaults = {
        "steps": None,
        "block_length": None,
        "remasking": "low_confidence",
        "cfg_scale": 0.0,
        "threshold": None,
        "mask_token_id": 126336,
        "eot_token_id": 126348,
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
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("max_new_tokens", 128)
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, model_config) -> "LLaDAGenerationConfig":
        """Only token ids come from the model config (the base version copies every matching attribute)."""
        config = model_config if isinstance(model_config, dict) else model_config.to_dict()
        ids = ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id")
        generation_config = cls(**{k: config[k] for k in ids if config.get(k) is not None})
        generation_config._from_model_config = True
        return generation_config

    def validate(self, strict: bool = False, user_set_attributes: set[str] | None = None):
        if self.remasking not in CONFIDENCE_RULES:
            raise ValueError(f"Unknown remasking {self.remasking!r}; valid: {sorted(CONFIDENCE_RULES)}.")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}.")
        if self.cfg_scale is None or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}.")
        for name in ("steps", "block_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        if self.suppress_eos_confidence not in (None, "official", "rank_last"):
            raise ValueError(
                "suppress_eos_confidence must be None, 'official' or 'rank_last', "
                f"got {self.suppress_eos_confidence!r}."
            )
        if self.cache not in CACHE_MODES:
            raise ValueError(f"Unknown cache {self.cache!r}; valid: {list(CACHE_MODES)}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}.")
        # The base checks, without its autoregressive max_new_tokens > 0 rule (0 is valid here: infilling only).
        max_new_tokens, self.max_new_tokens = self.max_new_tokens, None
        try:
            super().validate(strict=strict, user_set_attributes=user_set_attributes)
        finally:
            self.max_new_tokens = max_new_tokens


# ---------------------------------------------------------------------------------------------------------------------
# Strategies: small named functions, selected by name


def low_confidence(logits: torch.Tensor, x0: torch.Tensor, generator=None, **_) -> torch.Tensor:
    """Probability of the predicted token under softmax(logits), in the logits' dtype (official: bf16)."""
    probs = F.softmax(logits, dim=-1)
    return torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)


def random_confidence(logits: torch.Tensor, x0: torch.Tensor, generator=None, offset: int = 0, length=None):
    """Uniform random scores: one fp32 `rand((B, L))` draw over the whole canvas (official shape), then windowed."""
    length = length or x0.shape[1]
    scores = torch.rand((x0.shape[0], length), device=x0.device, generator=generator)
    return scores[:, offset : offset + x0.shape[1]]


def margin_confidence(logits: torch.Tensor, x0: torch.Tensor, generator=None, **_) -> torch.Tensor:
    """Top-1 minus top-2 probability: commits positions where the model is not torn between two tokens."""
    top2 = F.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def entropy_confidence(logits: torch.Tensor, x0: torch.Tensor, generator=None, **_) -> torch.Tensor:
    """Negative entropy of the predictive distribution (higher = more certain)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return (log_probs.exp() * log_probs).sum(-1)


CONFIDENCE_RULES = {
    "low_confidence": low_confidence,
    "random": random_confidence,
    "margin": margin_confidence,
    "entropy": entropy_confidence,
}


def sample_tokens(logits: torch.Tensor, temperature: float, generator=None, offset: int = 0, length=None):
    """argmax at temperature 0; else Gumbel-max in float64: exp(logits) / (-log u)^T, u ~ U(0, 1).

    The uniform noise is drawn for the whole canvas (`length` columns, the official shape and RNG order) even when
    `logits` covers only the window starting at `offset`, so windowed and full sampling give the same tokens.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    batch, width, vocab = logits.shape
    shape = (batch, length or width, vocab)
    uniform = torch.rand(shape, dtype=torch.float64, device=logits.device, generator=generator)
    uniform = uniform[:, offset : offset + width]
    return (logits.to(torch.float64).exp() / (-torch.log(uniform)) ** temperature).argmax(dim=-1)


def transfer_schedule(mask_counts: torch.Tensor, steps: int) -> list[list[int]]:
    """Tokens to commit per row and step: n // steps each, the first n % steps steps one more (official split)."""
    base, remainder = mask_counts // steps, mask_counts % steps
    schedule = base[:, None] + (torch.arange(steps, device=mask_counts.device)[None, :] < remainder[:, None])
    return schedule.tolist()


def select_topk(confidence: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """Boolean (B, L) selection of the k_j most confident columns per row (official per-row `torch.topk`)."""
    selected = torch.zeros_like(confidence, dtype=torch.bool)
    if len(set(ks)) == 1:
        if ks[0] > 0:
            selected.scatter_(1, torch.topk(confidence, ks[0], dim=-1).indices, True)
        return selected
    for row, k in enumerate(ks):
        if k > 0:
            selected[row, torch.topk(confidence[row], k).indices] = True
    return selected


def select_threshold(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Every candidate with confidence >= threshold, and at least the best one (Fast-dLLM parallel decoding)."""
    candidates = confidence > -torch.inf
    count = ((confidence >= threshold) & candidates).sum(-1).clamp(min=1).minimum(candidates.sum(-1))
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
    ranks_kept = torch.arange(confidence.shape[1], device=confidence.device)[None, :] < count[:, None]
    return torch.zeros_like(candidates).scatter_(1, order, ranks_kept)


@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """`sequences` (prompt + answer), `nfe` (model forwards; a CFG pair counts once), optional canvas `history`."""

    sequences: torch.LongTensor | None = None
    nfe: int | None = None
    history: tuple[torch.LongTensor, ...] | None = None


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

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


CACHE_MODES = ("none", "prefix", "dual")


# ---------------------------------------------------------------------------------------------------------------------
# The mixin


class DiffusionGenerationMixin:
    """Adds the masked-diffusion `generate()` (the name must end in `GenerationMixin`: transformers keys
    `can_generate()`, the generation config and pipeline support on it)."""

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             cache_dir, force_download, proxies, local_files_only, token, revision, subfolder,
                             trust_remote_code, **kwargs):  # fmt: skip
        """Load `generation_config.json` as `LLaDAGenerationConfig` (the base version loads a plain one)."""
        if generation_config is not None:
            self.generation_config = LLaDAGenerationConfig.from_dict(generation_config.to_dict())
        elif pretrained_model_name_or_path is not None:
            try:
                self.generation_config = LLaDAGenerationConfig.from_pretrained(
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
            except OSError:
                pass  # keep the one built from the model config

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
        return input_ids.device if input_ids is not None else torch.device("cpu")

    def _prepare_diffusion_config(self, generation_config, kwargs: dict) -> tuple[LLaDAGenerationConfig, dict]:
        """kwargs > passed config > model config; the official-style `temperature=t` alone implies sampling."""
        base = generation_config if generation_config is not None else self.generation_config
        config = copy.deepcopy(base)
        if not isinstance(config, LLaDAGenerationConfig):
            config = LLaDAGenerationConfig.from_dict(config.to_dict())
        if kwargs.get("temperature") and "do_sample" not in kwargs:
            kwargs["do_sample"] = True
        unused = config.update(**kwargs)
        config.validate()
        unused.pop("tokenizer", None)  # the pipeline passes it along
        unused.pop("use_cache", None)
        if unused:
            raise ValueError(f"generate() got unexpected arguments: {sorted(unused)}.")
        return config, unused

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: LLaDAGenerationConfig | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor | DiffusionGenerateOutput:
        """Fill `max_new_tokens` masks after the prompt by iterative unmasking; returns prompt + answer.

        Inputs may be left-padded (with `attention_mask`). With `infill=True`, mask tokens inside `inputs` are filled
        too and everything else stays fixed (`max_new_tokens=0` fills only those). `generator` replaces the global
        RNG for sampling and random remasking.
        """
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        config, _ = self._prepare_diffusion_config(generation_config, kwargs)
        device = self._diffusion_device(input_ids)
        if input_ids is None:
            input_ids = torch.empty((1, 0), dtype=torch.long, device=device)
        input_ids = input_ids.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        if config.num_return_sequences and config.num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)

        plan = self._check_diffusion_inputs(input_ids, attention_mask, config)
        vocab = self.config.vocab_size
        prompt_len, gen_len = input_ids.shape[1], config.max_new_tokens
        mask_id = config.mask_token_id
        x = F.pad(input_ids, (0, gen_len), value=mask_id)
        if attention_mask is not None:
            if bool((attention_mask == 1).all()):
                attention_mask = None  # the official code builds no bias then; neither do we
            else:
                attention_mask = F.pad(attention_mask, (0, gen_len), value=1)
        prompt_index = x != mask_id
        eos_ids = _as_list(config.eos_token_id)
        # The default EoT id is the 8B vocabulary's; a smaller vocabulary simply has no EoT token.
        eot_ids = [config.eot_token_id] if config.eot_token_id is not None and config.eot_token_id < vocab else []
        temperature = config.temperature if config.do_sample else 0.0
        confidence_rule = CONFIDENCE_RULES[config.remasking]
        length = x.shape[1]
        self.model.rotary_emb.ensure_length(length)  # cached steps pass explicit positions: cover the canvas
        rows = torch.arange(x.shape[0], device=device)  # rows still being denoised (EOS early stop drops rows)
        cache = DiffusionKVCache() if config.cache != "none" else None
        history, nfe = [], 0
        stream = _Stream(streamer, input_ids, prompt_len, mask_id) if streamer is not None else None

        for block_start, block_end, steps in plan:
            if rows.numel() == 0:
                break
            if config.infill:  # masks inside the prompt count too: one device sync per block
                counts = (x[rows, :block_end] == mask_id).sum(-1)
            else:  # the block is all masks: known on the host, no sync
                counts = torch.full((rows.numel(),), block_end - block_start)
            schedule = transfer_schedule(counts, steps) if config.threshold is None else None
            # Columns that get logits: the block (its masks are the only candidates), or the whole canvas.
            window = (block_start, block_end) if config.fast or cache is not None else (0, length)
            step = 0
            while step < steps if config.threshold is None else bool((x[rows, :block_end] == mask_id).any()):
                # Columns run through the model: all of them, except cached steps after a block's first.
                query = (0, length)
                if cache is not None and step > 0:
                    query = (block_start, length if config.cache == "prefix" else block_end)
                x_rows = x[rows]
                mask_rows = attention_mask[rows] if attention_mask is not None else None
                logits = self._diffusion_logits(x_rows, mask_rows, prompt_index[rows], config, query, window, cache)
                nfe += 1
                x_window = x_rows[:, window[0] : window[1]]
                transfer, x0 = self._diffusion_step(
                    logits, x_window, window, block_end, length, config, schedule, step, temperature, confidence_rule,
                    generator, eos_ids, eot_ids,
                )  # fmt: skip
                x[rows, window[0] : window[1]] = torch.where(transfer, x0, x_window)
                step += 1
                if config.output_history:
                    history.append(x.clone())
                if stream is not None:
                    stream.update(x)
                if config.early_stop:
                    rows, schedule = self._drop_finished_rows(x, rows, schedule, prompt_len, mask_id, eos_ids, cache)
                    if rows.numel() == 0:
                        break

        if stream is not None:
            stream.finish(x)
        if config.return_dict_in_generate:
            return DiffusionGenerateOutput(sequences=x, nfe=nfe, history=tuple(history) if history else None)
        return x

    @staticmethod
    def _diffusion_step(logits, x_window, window, block_end, length, config, schedule, step, temperature,
                        confidence_rule, generator, eos_ids, eot_ids):  # fmt: skip
        """Predict, score and pick the columns to commit, within the window [start, end) of the canvas.

        Order as in the official sampler: EOS logit suppression, x0 (argmax or Gumbel), the confidence rule on the
        un-noised logits, later blocks and committed columns excluded, then top-k (or threshold) selection.
        """
        start, end = window
        if config.suppress_eos_logits:
            logits[:, :, eos_ids] = -torch.inf
        x0 = sample_tokens(logits, temperature, generator, offset=start, length=length)
        if config.suppress_eos_confidence == "official":
            # Official quirk: at T > 0 only the EoT column of the logits is cleared, at T = 0 EOS and EoT.
            logits[:, :, eot_ids if temperature > 0 else [*eos_ids, *eot_ids]] = -torch.inf
        confidence = confidence_rule(logits, x0, generator, offset=start, length=length)
        if config.suppress_eos_confidence == "rank_last":
            is_eos = torch.isin(x0, torch.tensor([*eos_ids, *eot_ids], device=x0.device))
            confidence = torch.where(is_eos, confidence.float() - 1e4, confidence.float())
        confidence[:, block_end - start :] = -torch.inf
        mask_index = x_window == config.mask_token_id
        x0 = torch.where(mask_index, x0, x_window)
        confidence = torch.where(mask_index, confidence, -torch.inf)
        if window != (0, length):  # select on the full row, exactly as the official per-row topk sees it
            full = confidence.new_full((confidence.shape[0], length), -torch.inf)
            full[:, start:end] = confidence
            confidence = full
        if config.threshold is None:
            transfer = select_topk(confidence, [row[step] for row in schedule])
        else:
            transfer = select_threshold(confidence, config.threshold)
        return transfer[:, start:end], x0

    def _diffusion_logits(self, x, attention_mask, prompt_index, config, query, window, cache) -> torch.Tensor:
        """Logits of the window's columns from one forward over the query's columns.

        With CFG the batch is doubled, its second half with the prompt masked: un + (s + 1)(cond - un).
        """
        if config.cfg_scale > 0:
            x = torch.cat([x, torch.where(prompt_index, config.mask_token_id, x)])
            attention_mask = torch.cat([attention_mask, attention_mask]) if attention_mask is not None else None
        start, end = query
        if cache is not None:
            cache.begin(refresh=query == (0, x.shape[1]), start=start, end=end)
        forward = self._compiled_forward() if config.compile else self
        logits = forward(
            input_ids=x[:, start:end],
            attention_mask=attention_mask,
            position_ids=torch.arange(start, end, device=x.device)[None],
            diffusion_cache=cache,
            logits_to_keep=slice(window[0] - start, window[1] - start),
        ).logits
        if config.cfg_scale > 0:
            cond, uncond = logits.chunk(2)
            return uncond + (config.cfg_scale + 1) * (cond - uncond)
        return logits

    def _compiled_forward(self):
        if getattr(self, "_llada_compiled_forward", None) is None:
            self._llada_compiled_forward = torch.compile(self, dynamic=False)
        return self._llada_compiled_forward

    @staticmethod
    def _drop_finished_rows(x, rows, schedule, prompt_len, mask_id, eos_ids, cache=None):
        """Rows whose answer has no mask before its first EOS are final: fill their masks with EOS, stop them."""
        answer = x[rows, prompt_len:]
        is_eos = torch.isin(answer, torch.tensor(eos_ids, device=x.device))
        positions = torch.arange(answer.shape[1], device=x.device)
        first_eos = torch.where(is_eos, positions, answer.shape[1]).min(-1).values
        masks_before = ((answer == mask_id) & (positions[None, :] < first_eos[:, None])).any(-1)
        finished = is_eos.any(-1) & ~masks_before
        if not bool(finished.any()):
            return rows, schedule
        done = rows[finished]
        x[done] = torch.where(x[done] == mask_id, eos_ids[0], x[done])
        keep = (~finished).tolist()
        if schedule is not None:
            schedule = [s for s, k in zip(schedule, keep) if k]
        if cache is not None:
            kept = (~finished).nonzero().flatten()
            cache_rows = next(iter(cache.keys.values())).shape[0] if cache.keys else len(keep)
            cache.select(torch.cat([kept, kept + len(keep)]) if cache_rows == 2 * len(keep) else kept)
        return rows[~finished], schedule

    def _check_diffusion_inputs(self, input_ids, attention_mask, config) -> list[tuple[int, int]]:
        """Validate the request; return the block plan [(first_candidate_column, block_end, steps), ...]."""
        mask_id = config.mask_token_id
        if mask_id is None:
            raise ValueError("generation_config.mask_token_id is not set.")
        vocab = self.config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab}).")
        if not 0 <= mask_id < vocab:
            raise ValueError(f"mask_token_id {mask_id} is outside the vocabulary [0, {vocab}).")
        if config.pad_token_id is not None and config.pad_token_id == mask_id:
            raise ValueError(f"pad_token_id equals mask_token_id ({mask_id}): padding would be generated over.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}."
            )
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
            if config.threshold is None and steps > n_masks:
                raise ValueError(f"steps ({steps}) > masks to fill ({n_masks}): some steps would commit nothing.")
            return [(0, prompt_len, steps)]
        block_length = config.block_length or gen_len
        if gen_len % block_length:
            raise ValueError(f"max_new_tokens ({gen_len}) must be divisible by block_length ({block_length}).")
        num_blocks = gen_len // block_length
        steps = config.steps or gen_len
        if config.threshold is None:
            if steps > gen_len:
                raise ValueError(f"steps ({steps}) > max_new_tokens ({gen_len}): some steps would commit nothing.")
            if steps % num_blocks:
                raise ValueError(f"steps ({steps}) must be divisible by the number of blocks ({num_blocks}).")
        first = 0 if config.infill else prompt_len  # prompt masks are candidates in every block
        blocks = [(prompt_len + b * block_length, prompt_len + (b + 1) * block_length) for b in range(num_blocks)]
        return [(first if b == 0 else start, end, steps // num_blocks) for b, (start, end) in enumerate(blocks)]


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
    "DiffusionGenerateOutput",
    "DiffusionGenerationMixin",
    "LLaDAGenerationConfig",
    "sample_tokens",
    "select_threshold",
    "select_topk",
    "transfer_schedule",
]
