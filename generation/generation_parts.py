"""The sampler's parts for LLaDA (relative blocks) and the primitives every family shares.

A sampler is composed of one object per role, each with one interface; a family's generation config picks them
(`LLaDAGenerationConfig.sampler_parts`). `DiffusionSampler.step()` (generation_llada.py) calls them in this order:
layout.forward -> proposal.propose -> confidence.score -> selection.select -> commit -> revision.revise. Between
steps the engine asks selection.open / stopping.after_step / stopping.after_block; at the end finalisation.finalise.
"""

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers.generation import logits_process as lp

# ---------------------------------------------------------------------------------------------------------------------
# Primitives (each written once)


def as_list(token_ids) -> list[int]:
    """An id or a list of ids (or None) as a list."""
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


def is_any(x: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Boolean, shaped like `x`: where `x` holds one of `ids` (EOS / EoT lists)."""
    return torch.isin(x, torch.tensor(ids, device=x.device))


def temperature_of(config) -> float:
    """Sampling temperature: 0 (greedy) unless do_sample; transformers' default 1.0 when sampling without one."""
    if not config.do_sample:
        return 0.0
    return float(config.temperature) if config.temperature is not None else 1.0


def classifier_free_guidance(logits_fn, input_ids, prompt_index, cfg_scale: float, mask_id: int, attention_mask=None):
    """un + (s + 1)(cond - un) from one forward over [cond; uncond] (the official order of operations).

    `logits_fn(input_ids, attention_mask)` returns logits; the unconditional rows are `input_ids` with the columns of
    `prompt_index` (boolean, broadcast to the ids) set to `mask_id`. With `cfg_scale == 0` it is one plain forward.
    Used by generation and by the likelihood estimator."""
    if cfg_scale == 0:
        return logits_fn(input_ids, attention_mask)
    unconditional = torch.where(prompt_index, mask_id, input_ids)
    both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    cond, uncond = logits_fn(torch.cat([input_ids, unconditional]), both_mask).chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


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


def select_count(confidence: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The `count[row]` best candidates (at least one, at most all finite ones)."""
    candidates = confidence > -torch.inf
    count = count.clamp(min=1).minimum(candidates.sum(-1))
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
    ranks_kept = torch.arange(confidence.shape[1], device=confidence.device)[None, :] < count[:, None]
    return torch.zeros_like(candidates).scatter_(1, order, ranks_kept)


def estimate_step_bytes(rows: int, length: int, window: int, vocab: int, sampling: bool, cfg: bool) -> int:
    """Bytes one denoising step allocates beyond the weights: canvas, logits of the window, the official noise.

    `window`: the columns the step computes logits on; `sampling`: the official fp64 Gumbel noise over the whole
    canvas is drawn; `cfg`: the forward runs a doubled batch. Shared by generate()'s pre-check and llada_hf.memory."""
    logits = rows * (2 if cfg else 1) * window * vocab * 4 * 3  # raw, processed/softmax, temporaries
    noise = rows * length * vocab * 8 if sampling else 0
    return rows * length * 8 * 4 + logits + noise


class StepView(NamedTuple):
    """Geometry of one step (host ints, so the compiled step sees static values): columns run through the model,
    columns scored, the block end, the prompt length, the selection's top-k width, whether revision may act."""

    query: tuple[int, int]
    window: tuple[int, int]
    block_end: int
    prompt_len: int
    k_max: int
    allow_remask: bool


class SamplerParts(NamedTuple):
    """The parts a family's generation config chooses (`sampler_parts()`); `revision` is None when off."""

    layout: Any
    proposal: Any
    confidence: Any
    selection: Any
    revision: Any
    stopping: Any
    finalise: Any  # callable(state) -> the returned sequences


class Block(NamedTuple):
    """One block of the plan: first candidate column, end column, steps."""

    start: int
    end: int
    steps: int


# ---------------------------------------------------------------------------------------------------------------------
# Proposal: the processed logits and the drawn tokens


class Proposal:
    """EOS bans by column, the processors (canvas as `input_ids`), tempered warpers as masks, then argmax or the
    official fp64 Gumbel-max. `draw()` takes the official noise before the forward (the official RNG order)."""

    def __init__(self, config, logits_processor=None, temperature: float | None = None, warp_as_mask: bool = True):
        self.temperature = temperature_of(config) if temperature is None else temperature
        self.eos_ids, self.mask_id = as_list(config.eos_token_id), config.mask_token_id
        self.ban_all_eos, self.min_new_tokens = config.suppress_eos_logits, config.min_new_tokens or 0
        self.suppress_first = list(config.begin_suppress_tokens or [])
        self.user_ids = {id(processor) for processor in logits_processor or []}
        self.processors = build_processors(config, logits_processor)
        self.warpers = build_warpers(config) if temperature_of(config) > 0 else lp.LogitsProcessorList()
        self.warp_as_mask = warp_as_mask
        self.gumbel = self.temperature > 0  # draws the official fp64 noise over the whole canvas

    def draw(self, rows: int, length: int, view: StepView, vocab: int, device, generator=None):
        """fp64 uniforms over the whole canvas (T > 0), windowed to the scored columns."""
        if self.temperature == 0:
            return None
        start, end = view.window
        return torch.rand((rows, length, vocab), dtype=torch.float64, device=device, generator=generator)[:, start:end]

    def process(self, logits: torch.Tensor, x: torch.Tensor, view: StepView) -> torch.Tensor:
        """The scores the proposal draws from; without bans or processors `logits` itself (the official path)."""
        (start, end), prompt_len, scores = view.window, view.prompt_len, logits
        columns = torch.arange(start, end, device=logits.device)
        ban_eos_until = x.shape[1] if self.ban_all_eos else prompt_len + self.min_new_tokens
        if self.eos_ids and ban_eos_until > start:
            scores = _ban(scores, self.eos_ids, columns < ban_eos_until)
        if self.suppress_first and start <= prompt_len < end:  # short-circuits: no guard on the window (compile)
            scores = _ban(scores, self.suppress_first, columns == prompt_len)
        if self.processors or (self.warpers and self.warp_as_mask):
            batch, width, vocab = scores.shape
            flat_ids = x.repeat_interleave(width, dim=0)
            flat = self.run_processors(flat_ids, scores.reshape(batch * width, vocab))
            if self.warpers and self.warp_as_mask:  # decided on the tempered distribution, as transformers orders them
                kept = self.warpers(flat_ids, flat / self.temperature) > -torch.inf
                flat = flat.masked_fill(~kept, -torch.inf)
            scores = flat.reshape(batch, width, vocab)
        return scores

    def run_processors(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The processors in order; a user processor that changes the scores' shape, or leaves a position with NaN
        for every token (its argmax would silently be token 0), is named in the error."""
        for processor in self.processors:
            out = processor(input_ids, scores)
            if id(processor) in self.user_ids:
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

    def propose(self, logits: torch.Tensor, x: torch.Tensor, view: StepView, noise) -> tuple:
        """(x0, scores): the drawn tokens and the scores the confidence rule reads."""
        scores = self.process(logits, x, view)
        return sample_tokens(scores, self.temperature, noise), scores


def _ban(scores: torch.Tensor, ids: list[int], columns: torch.Tensor) -> torch.Tensor:
    """`scores` with the tokens `ids` at -inf in the given (boolean) columns."""
    banned = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    banned[ids] = True
    return scores.masked_fill(columns[:, None] & banned, -torch.inf)


def _bias_items(sequence_bias) -> list:
    """(ids, bias) pairs of `sequence_bias`, given as a dict or in its serialised form [[ids, bias], ...]."""
    if not sequence_bias:
        return []
    return list(sequence_bias.items()) if isinstance(sequence_bias, dict) else [tuple(p) for p in sequence_bias]


def build_processors(config, user_processors) -> lp.LogitsProcessorList:
    """The user's processors, then those the config's fields ask for (transformers appends the user's after its
    own): the fields' bans act last, so a user processor cannot lift them."""
    processors = lp.LogitsProcessorList()
    if config.remove_invalid_values:
        processors.append(lp.InfNanRemoveLogitsProcessor())
    processors.extend(user_processors or [])
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    bias = {tuple(ids): value for ids, value in _bias_items(config.sequence_bias)}
    for ids in config.bad_words_ids or []:
        bias[tuple(ids)] = -float("inf")
    if bias:
        processors.append(lp.SequenceBiasLogitsProcessor(bias))
    if config.suppress_tokens:
        processors.append(lp.SuppressTokensLogitsProcessor(config.suppress_tokens))
    return processors


#: transformers' sampling filters, in its order: field -> (value that turns it off, warper). Like transformers, they
#: act only when sampling, and top_p / typical_p >= 1 are off.
SAMPLING_FILTERS = {
    "top_k": (0, lp.TopKLogitsWarper),
    "top_p": (1.0, lp.TopPLogitsWarper),
    "min_p": (None, lp.MinPLogitsWarper),
    "typical_p": (1.0, lp.TypicalLogitsWarper),
    "epsilon_cutoff": (0.0, lp.EpsilonLogitsWarper),
    "eta_cutoff": (0.0, lp.EtaLogitsWarper),
}


def set_filters(config) -> list[str]:
    """The sampling filters the config turns on."""
    values = {name: (getattr(config, name, None), off) for name, (off, _) in SAMPLING_FILTERS.items()}
    return [n for n, (v, off) in values.items() if v is not None and (v < off if off == 1.0 else v != off)]


def build_warpers(config) -> lp.LogitsProcessorList:
    return lp.LogitsProcessorList(SAMPLING_FILTERS[name][1](getattr(config, name)) for name in set_filters(config))


# ---------------------------------------------------------------------------------------------------------------------
# Confidence: how sure the model is of each proposed token


def low_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Probability of the predicted token under softmax(logits), in the logits' dtype (official: bf16)."""
    return torch.gather(F.softmax(logits, dim=-1), -1, x0.unsqueeze(-1)).squeeze(-1)


def random_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform random scores: the official fp32 `rand((B, L))` draw, windowed (drawn by `Confidence.draw`)."""
    return noise


def margin_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Top-1 minus top-2 probability: commits positions where the model is not torn between two tokens."""
    top2 = F.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def entropy_confidence(logits: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Negative entropy of the predictive distribution (higher = more certain)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return (log_probs.exp() * log_probs).sum(-1)


#: name -> rule(logits, x0, noise) -> confidence (B, W). "random" needs the noise `Confidence.draw` takes.
CONFIDENCE_RULES = {
    "low_confidence": low_confidence,
    "random": random_confidence,
    "margin": margin_confidence,
    "entropy": entropy_confidence,
}


class Confidence:
    """The config's rule on the un-noised proposal scores, with the EOS options (`suppress_eos_confidence`)."""

    def __init__(self, config, temperature: float | None = None) -> None:
        self.rule, self.eos_option = CONFIDENCE_RULES[config.remasking], config.suppress_eos_confidence
        self.eos_ids, self.eot_ids = as_list(config.eos_token_id), as_list(config.eot_token_id)
        self.temperature = temperature_of(config) if temperature is None else temperature

    def draw(self, rows: int, length: int, view: StepView, device, generator=None):
        """The official fp32 `rand((B, L))` of random remasking (drawn after the proposal's noise), windowed."""
        if self.rule is not random_confidence:
            return None
        start, end = view.window
        return torch.rand((rows, length), device=device, generator=generator)[:, start:end]

    def score(self, scores: torch.Tensor, x0: torch.Tensor, noise) -> torch.Tensor:
        if self.eos_option == "official":
            # Official quirk: at T > 0 only the EoT column of the logits is cleared, at T = 0 EOS and EoT.
            cleared = self.eot_ids if self.temperature > 0 else [*self.eos_ids, *self.eot_ids]
            scores = scores.clone()
            scores[:, :, cleared] = -torch.inf
        confidence = self.rule(scores, x0, noise)
        if self.eos_option == "rank_last":
            is_eos = is_any(x0, [*self.eos_ids, *self.eot_ids])
            confidence = torch.where(is_eos, confidence.float() - 1e4, confidence.float())
        return confidence


# ---------------------------------------------------------------------------------------------------------------------
# Selection: which candidates a step commits, and how many steps a block gets


class ScheduleSelection:
    """The official count schedule: block b's masks spread evenly over its steps; the fixed rule ranks the full
    canvas row, as the official per-row `topk` does. `extra_per_step`: revision may add that many per step."""

    def __init__(self, config, extra_per_step: int = 0) -> None:
        self.infill, self.mask_id, self.extra_per_step = config.infill, config.mask_token_id, extra_per_step

    def schedule(self, state, block: Block, length: int) -> tuple:
        """(counts, k_max): a host list when every row commits the same number (the official case: no sync, one
        batched `topk`), else a (B_active, steps) tensor (infill counts prompt masks: one sync per block)."""
        if self.infill:
            counts = (state.x[state.rows, : block.end] == self.mask_id).sum(-1)
            k_max = -(-int(counts.max()) // block.steps) if counts.numel() else 0
            schedule = transfer_schedule(counts, block.steps)
        else:
            schedule = transfer_schedule(torch.tensor([block.end - block.start]), block.steps)[0].tolist()
            k_max = schedule[0]
        if self.extra_per_step:  # counts grow by what the previous step re-masked: per row
            if isinstance(schedule, list):
                schedule = torch.tensor(schedule, device=state.x.device).expand(state.rows.numel(), -1)
            k_max += self.extra_per_step
        return schedule, min(k_max, length)

    def open(self, state, block: Block, step: int) -> bool:
        """Whether the block takes another step (a predicate: reads the state, changes nothing)."""
        return step < block.steps

    def select(self, confidence: torch.Tensor, k, view: StepView, length: int) -> torch.Tensor:
        start, end = view.window
        if (start, end) == (0, length):
            return select_topk(confidence, k, view.k_max)
        full = F.pad(confidence, (start, length - end), value=-torch.inf)
        return select_topk(full, k, view.k_max).narrow(1, start, end - start)


class ThresholdSelection(ScheduleSelection):
    """Fast-dLLM parallel decoding: every candidate with confidence >= `threshold`, or with `factor` the largest n
    with (n + 1)(1 - c_(n)) < factor (c sorted descending); at least the best one. A block runs until it has no mask
    (one sync per step)."""

    def __init__(self, config, extra_per_step: int = 0) -> None:
        super().__init__(config)
        self.threshold, self.factor = config.threshold, config.factor

    def schedule(self, state, block, length) -> tuple:
        return None, 0

    def open(self, state, block, step) -> bool:
        return bool((state.x[state.rows, : block.end] == self.mask_id).any())

    def select(self, confidence, k, view, length) -> torch.Tensor:
        if self.factor is None:
            return select_count(confidence, ((confidence >= self.threshold) & (confidence > -torch.inf)).sum(-1))
        ranked = torch.sort(confidence.float(), dim=-1, descending=True).values
        n = torch.arange(1, ranked.shape[1] + 1, device=ranked.device)[None, :]
        ok = ((n + 1) * (1 - ranked) < self.factor) & (ranked > -torch.inf)
        return select_count(confidence, ok.cumprod(-1).sum(-1))


# ---------------------------------------------------------------------------------------------------------------------
# Revision: ReMDM-conf self-correction


class RemaskRevision:
    """After each commit, up to `per_step` earlier commits of the block whose proposal probability when committed
    was below `threshold` go back to mask (at most `budget` per row and block); the next step commits as many more."""

    def __init__(self, config) -> None:
        self.threshold, self.per_step = config.remask_threshold, config.remask_per_step
        self.mask_id = config.mask_token_id

    budgeted = True  # the engine keeps commit probabilities and budgets on the state

    def revise(self, inp, transfer, x0, scores, confidence, new_window, view: StepView) -> tuple:
        """(window, commit probabilities, budget left, re-masked per row)."""
        start, end = view.window
        window, committed = inp.x.narrow(1, start, end - start), inp.committed.narrow(1, start, end - start)
        x0 = torch.where(window == self.mask_id, x0, window)  # the proposal where masked, else the canvas token
        committed = torch.where(transfer, low_confidence(scores, x0).float(), committed)
        budget, remasked = inp.budget, torch.zeros_like(inp.budget)
        if view.allow_remask:
            columns = torch.arange(start, end, device=x0.device)[None, :]
            earlier = (~transfer) & (new_window != self.mask_id) & ~inp.prompt_index.narrow(1, start, end - start)
            earlier &= (columns < view.block_end) & (columns >= view.prompt_len)
            doubtful = torch.where(earlier & (committed < self.threshold), -committed, -torch.inf)
            count = (doubtful > -torch.inf).sum(-1).minimum(budget).clamp(max=self.per_step)
            chosen = select_topk(doubtful, count, min(self.per_step, end - start)) & (doubtful > -torch.inf)
            new_window = torch.where(chosen, self.mask_id, new_window)
            committed = torch.where(chosen, torch.inf, committed)
            remasked = chosen.sum(-1)
            budget = budget - remasked
        return new_window, committed, budget, remasked


# ---------------------------------------------------------------------------------------------------------------------
# Stopping: rows whose answer is final


class EosStop:
    """A row is final when its answer has no mask before its first EOS (`early_stop`), or when a stopping criterion
    fires on its final prefix (no mask before it); its remaining columns (after the prefix that fired) become EOS."""

    def __init__(self, config, criteria) -> None:
        self.early_stop, self.criteria, self.mask_id = config.early_stop, criteria, config.mask_token_id
        self.eos = as_list(config.eos_token_id)
        if (self.early_stop or criteria) and not self.eos:
            raise ValueError("early_stop and stopping criteria need eos_token_id (the filler of stopped rows).")

    def after_step(self, state, before: torch.Tensor, view: StepView) -> torch.Tensor | None:
        """Boolean over the active rows: finished (their canvas is filled with EOS here), or None."""
        if not (self.early_stop or self.criteria):
            return None
        rows, prompt_len = state.rows, state.prompt_len
        answer = state.x[rows, prompt_len:]
        positions = torch.arange(answer.shape[1], device=answer.device)
        first_mask = torch.where(answer == self.mask_id, positions, answer.shape[1]).min(-1).values
        cut = torch.full_like(first_mask, -1)  # answer length kept; -1 = row goes on
        if self.early_stop:
            is_eos = is_any(answer, self.eos)
            first_eos = torch.where(is_eos, positions, answer.shape[1]).min(-1).values
            cut = torch.where(is_eos.any(-1) & (first_eos < first_mask), answer.shape[1], cut)
        if self.criteria:
            final = first_mask.tolist()
            for i, row in enumerate(rows.tolist()):
                if int(cut[i]) >= 0:
                    continue
                for n in range(state.checked[row] + 1, final[i] + 1):
                    if bool(self.criteria(state.x[row : row + 1, : prompt_len + n], None).any()):
                        cut[i] = n
                        break
                state.checked[row] = final[i]
        finished = cut >= 0
        if bool(finished.any()):
            done, tail = rows[finished], positions[None, :] >= cut[finished][:, None]
            answer_done = state.x[done, prompt_len:]
            state.x[done, prompt_len:] = torch.where(tail | (answer_done == self.mask_id), self.eos[0], answer_done)
        return finished

    def after_block(self, state, block: Block) -> torch.Tensor | None:
        return None


def canvas(state) -> torch.LongTensor:
    """LLaDA's finalisation: the whole canvas (prompt + answer)."""
    return state.x
