"""The LLaDA2.0 sampler as parts of the diffusion engine, chosen by `LLaDA2GenerationConfig.sampler_parts()`.

How the official sampler (the hub `modeling_llada2_moe.py` `generate()`) differs from LLaDA-8B's, part by part:

* layout (`AbsoluteBlocks`): blocks on the absolute grid [b * block_length, (b + 1) * block_length) of a canvas
  rounded up to whole blocks (the first holds the prompt's tail); block-causal attention over the prefix up to the
  block's end; the exact block cache (`block_cache=True`): a finished block's keys never change under block-causal
  attention, so a `DynamicCache` keeps them (the current block's are cropped after each forward); same tokens as
  uncached. A left-padded batch is split by padding % block_length (`groups`): each row gets its alone grid.
* proposal (`LLaDA2Proposal`): multinomial from softmax(logits / T) after top_k then top_p; confidence: the drawn
  token's probability. selection (`CountThresholdSelection`): `steps` per block (capped at max_new_tokens //
  minimal_topk), the count schedule, or every column above `threshold` when they are at least the count.
* stopping/finalisation (`LLaDA2Stop`): rows whose answer holds an EOS stop after each block; `sequences` is prompt +
  `max_new_tokens` padded after the first EOS. `official=True` reproduces the hub `generate()` token for token
  (batch 1, quirks included: temperature 0 still samples; it returns the new tokens cut after the first EOS, or
  with `early_stop` (`eos_early_stop`) `canvas[:, :eos + 1]`, prompt included, on an EOS committed mid-block).
"""

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from .generation_config import LLaDAGenerationConfig, _check_choice, _check_int, _check_number
from .generation_llada import DiffusionGenerationMixin
from .generation_parts import (
    Block,
    Confidence,
    EosStop,
    Proposal,
    SamplerParts,
    StepView,
    as_list,
    is_any,
    select_topk,
    temperature_of,
    transfer_schedule,
)


class LLaDA2GenerationConfig(LLaDAGenerationConfig):
    """`LLaDAGenerationConfig` with the LLaDA2 fields and defaults (the README's LLaDA2 table describes each).

    `steps` counts **per block** (official meaning). `official=True` reproduces the hub sampler bit for bit, quirks
    included (module docstring). `block_cache` keeps finished blocks' keys: exact under block-causal attention.
    `sampler="llada2.1"` adds token editing (`TokenEditing`): LLaDA2.1 checkpoints have LLaDA2.0's architecture, so
    the sampler is the user's choice; its fields `editing_threshold` / `max_post_steps` / `num_to_transfer` are None
    by default so that sampler="llada2.0" can refuse them (`EDITING_DEFAULTS` gives their values).
    """

    _diffusion_defaults = {
        **LLaDAGenerationConfig._diffusion_defaults,
        **dict(steps=32, block_length=32, threshold=0.95, minimal_topk=1, official=False, block_cache=True),
        **dict(sampler="llada2.0", editing_threshold=None, max_post_steps=None, num_to_transfer=None),
    }

    def validate(self, strict: bool = False, user_set_attributes: set[str] | None = None):
        super().validate(strict=strict, user_set_attributes=user_set_attributes)
        for name, (default, reason) in LLADA2_UNSUPPORTED.items():
            if getattr(self, name, default) != default:
                raise ValueError(f"LLaDA2 generate() does not support {name}={getattr(self, name)!r}: {reason}.")
        _check_int("minimal_topk", self.minimal_topk, low=1)
        for name in ("official", "block_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.steps is None or self.block_length is None:
            raise ValueError("LLaDA2 generate() needs steps (per block) and block_length.")
        _check_choice("sampler", self.sampler, ("llada2.0", "llada2.1"))
        if self.sampler == "llada2.0":
            for name in EDITING_DEFAULTS:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} is a token-editing field of sampler='llada2.1'; sampler='llada2.0' would ignore it. "
                        "Pass sampler='llada2.1' (LLaDA2.1 checkpoints) or drop it."
                    )
            return
        _check_number("editing_threshold", self.editing_threshold, low=0.0, high=1.0, optional=True)
        _check_int("max_post_steps", self.max_post_steps, low=0, optional=True)
        _check_int("num_to_transfer", self.num_to_transfer, low=1, optional=True)
        if self.compile:
            raise ValueError("compile is not supported with sampler='llada2.1' (its editing step is not compiled).")

    def editing(self, name: str):
        """A llada2.1 field, or its official default when None."""
        value = getattr(self, name)
        return EDITING_DEFAULTS[name] if value is None else value

    def sampler_parts(self, logits_processor=None, stopping_criteria=None) -> SamplerParts:
        """The LLaDA2.0 sampler, or with `sampler="llada2.1"` its editing parts (the module docstring lists each)."""
        editing = self.sampler == "llada2.1"
        stopping = (EditingStop if editing else LLaDA2Stop)(self, stopping_criteria)
        return SamplerParts(
            layout=AbsoluteBlocks(self),
            proposal=LLaDA2Proposal(self, logits_processor),
            confidence=Confidence(self, temperature=0.0),  # the drawn token's probability (remasking low_confidence)
            selection=(EditingSelection if editing else CountThresholdSelection)(self),
            revision=TokenEditing(self.editing("editing_threshold"), self.mask_token_id) if editing else None,
            stopping=stopping,
            finalise=stopping.finalise,
        )


#: The llada2.1 fields and their values when left None (the official `generate()` defaults).
EDITING_DEFAULTS = {"editing_threshold": 0.9, "max_post_steps": 16, "num_to_transfer": 1}

#: Engine options the LLaDA2 sampler does not have, with the reason (checked for every config a LLaDA2 model gets).
LLADA2_UNSUPPORTED = {
    "factor": (None, "the LLaDA2 sampler selects by its count schedule and threshold"),
    "remask_budget": (0, "self-correction is not part of the LLaDA2 sampler"),
    "cfg_scale": (0.0, "classifier-free guidance is not part of the LLaDA2 sampler"),
    "infill": (False, "infilling is not part of the LLaDA2 sampler"),
    "cache": ("none", "the approximate Fast-dLLM caches do not apply to block-causal attention"),
    "remasking": ("low_confidence", "the LLaDA2 confidence is the drawn token's probability"),
}


def official_top_k(logits: torch.Tensor, k) -> torch.Tensor:
    """The hub `_top_k_logits`: logits below the k-th largest become -inf (None or k <= 0: unchanged)."""
    if k is None or k <= 0:
        return logits
    values, _ = torch.topk(logits, k)
    return torch.where(logits < values[..., -1, None], torch.full_like(logits, float("-inf")), logits)


def official_top_p(logits: torch.Tensor, p) -> torch.Tensor:
    """The hub `_top_p_logits`: keep the smallest prefix of the sorted tokens whose mass exceeds p."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    remove = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, sorted_indices, remove)
    return logits.masked_fill(remove, float("-inf"))


def block_causal_mask(length: int, block_length: int, device=None) -> torch.Tensor:
    """(length, length) boolean: query i sees key j iff block(j) <= block(i) (blocks aligned at column 0)."""
    blocks = torch.arange(length, device=device) // block_length
    return blocks[None, :] <= blocks[:, None]


class LLaDA2Proposal(Proposal):
    """The engine's EOS bans and processors, then a multinomial draw from the tempered, filtered softmax (argmax at
    temperature 0 unless official); the draw happens here, after the forward (the official order). LLaDA2.1:
    temperature 0 is argmax in both modes (2.1 has a greedy branch; official: on the raw logits); the default mode
    never proposes the mask id (a committed mask would reopen the block)."""

    def __init__(self, config, logits_processor=None) -> None:
        super().__init__(config, logits_processor, temperature=0.0, warp_as_mask=False)
        self.official, self.top_k, self.top_p = config.official, config.top_k, config.top_p
        self.editing = config.sampler == "llada2.1"
        self.sample_temperature = temperature_of(config)
        if self.official and config.temperature is not None:
            self.sample_temperature = float(config.temperature)  # official: `temperature` alone, do_sample unused

    def draw(self, rows, length, view, vocab, device, generator=None):
        return generator  # nothing drawn ahead: propose() draws with it

    def propose(self, logits: torch.Tensor, x: torch.Tensor, view: StepView, generator) -> tuple:
        """(x0, scores) with softmax(scores) the proposal distribution (the confidence rule reads it back)."""
        if self.editing and self.official and self.sample_temperature == 0:
            return logits.argmax(-1), logits
        if self.editing and not self.official:
            logits = logits.clone()
            logits[..., self.mask_id] = -torch.inf  # a scalar index: no per-step host-to-device copy
        scores, temperature = self.process(logits, x, view), self.sample_temperature
        if self.official:
            if temperature > 0 and temperature != 1.0:
                scores = scores / temperature
            scores = official_top_p(official_top_k(scores, self.top_k), self.top_p)
        elif temperature == 0:
            return scores.argmax(-1), scores
        else:
            batch, width, vocab = scores.shape
            flat = scores.reshape(batch * width, vocab) / temperature
            if self.warpers:
                flat = self.warpers(x.repeat_interleave(width, dim=0), flat)
            scores = flat.reshape(batch, width, vocab)
        probs = F.softmax(scores, dim=-1)
        tokens = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return tokens.view(probs.shape[:-1]), scores


class CountThresholdSelection:
    """LLaDA2's per-block count schedule with threshold: all masked columns with confidence > threshold if they are
    at least the step's count k, else the k best; a block runs `steps` steps or until it has no mask."""

    def __init__(self, config) -> None:
        self.threshold, self.mask_id = config.threshold, config.mask_token_id

    def schedule(self, state, block: Block, length: int) -> tuple:
        counts = transfer_schedule(torch.tensor([block.end - block.start]), block.steps)[0].tolist()
        return counts, max(counts)

    def open(self, state, block: Block, step: int) -> bool:
        return step < block.steps and bool((state.x[state.rows, block.start : block.end] == self.mask_id).any())

    def select(self, confidence: torch.Tensor, k, view: StepView, length: int) -> torch.Tensor:
        candidates = confidence > -torch.inf
        above = candidates & (confidence > self.threshold) if self.threshold is not None else candidates & False
        n_above, n_candidates = above.sum(-1), candidates.sum(-1)
        if confidence.shape[0] == 1:  # the official per-row call: one `topk` with a host int (same pick among ties)
            best = select_topk(confidence, min(k, int(n_candidates)))
        else:
            best = select_topk(confidence, n_candidates.clamp(max=k), min(k, confidence.shape[1]))
        return torch.where((n_above >= k)[:, None], above, best)


class AbsoluteBlocks:
    """LLaDA2's layout: the absolute block grid, the block-causal prefix forward and the exact block cache."""

    def __init__(self, config) -> None:
        self.config, self.block_length = config, config.block_length
        # The official 2.1 text adds its 0/1 mask to the attention scores (not block-causal): no cache is exact there.
        self.additive = config.official and config.sampler == "llada2.1"

    def canvas_length(self, prompt_len: int, max_new_tokens: int) -> int:
        return -(-(prompt_len + max_new_tokens) // self.block_length) * self.block_length

    def logits_width(self, prompt_len: int, length: int) -> int:
        return self.block_length

    def make_cache(self) -> DynamicCache | None:
        return DynamicCache() if self.config.block_cache and not self.additive else None

    def groups(self, attention_mask: torch.Tensor) -> list | None:
        """[(residue, rows)] when the rows' left padding differs by other than whole blocks (default mode)."""
        if self.config.official:
            return None
        residues = (~attention_mask.bool()).sum(-1) % self.block_length
        if residues.unique().numel() == 1:
            return None
        return [(int(r), (residues == r).nonzero().flatten()) for r in residues.unique()]

    def plan(self, input_ids, attention_mask, prompt_masks, steps_per_token) -> list[Block]:
        """The blocks from the prompt's block to the canvas end; LLaDA2 steps are per block (no rescaling)."""
        config = self.config
        if config.official and input_ids.shape[0] != 1:
            raise ValueError("official=True reproduces the official sampler, which takes one prompt (batch 1).")
        if config.official and attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("official=True takes no padding (the official sampler has no attention mask).")
        prompt_len, gen_len, block_length = input_ids.shape[1], config.max_new_tokens, self.block_length
        steps = min(config.steps, gen_len // config.minimal_topk) if config.sampler == "llada2.0" else 0
        if steps < 1 and config.sampler == "llada2.0":
            raise ValueError(f"minimal_topk ({config.minimal_topk}) > max_new_tokens ({gen_len}): no step left.")
        num_blocks = self.canvas_length(prompt_len, gen_len) // block_length
        return [
            Block(b * block_length, (b + 1) * block_length, steps)
            for b in range(prompt_len // block_length, num_blocks)
        ]

    def view(self, block: Block, step: int, length: int, prompt_len: int, k_max: int, last: bool) -> StepView:
        return StepView((0, block.end), (block.start, block.end), block.end, prompt_len, k_max, False)

    def forward(self, model, inp, view: StepView, cache) -> torch.Tensor:
        """Uncached: the prefix [0, block_end). Cached: the columns not cached yet, [cached, block_end), reading the
        stored keys of the finished blocks; afterwards the cache keeps the columns before the window (finished)."""
        end, (w_start, w_end) = view.block_end, view.window
        if self.additive:  # official 2.1: the 0/1 mask added to the scores, over the prefix [0, block_end)
            mask = block_causal_mask(end, self.block_length, inp.x.device).to(model.dtype)[None, None]
            position_ids = torch.arange(end, device=inp.x.device)[None]
            return model(
                input_ids=inp.x[:, :end],
                attention_mask=mask,
                position_ids=position_ids,
                logits_to_keep=slice(w_start, w_end),
            ).logits
        cache = cache if w_start > 0 else None  # nothing finished yet: nothing to keep
        start = cache.get_seq_length() if cache is not None else 0
        ids = inp.x[:, start:end]
        mask = block_causal_mask(end, self.block_length, ids.device)[None, None, start:end]
        if inp.attention_mask is not None:
            keep = inp.attention_mask[:, :end].bool()
            eye = torch.eye(end, dtype=torch.bool, device=ids.device)[start:end]
            mask = mask & keep[:, None, None, :] | eye
            position_ids = (inp.attention_mask[:, :end].cumsum(-1) - 1).clamp(min=0)[:, start:end]
        else:
            position_ids = torch.arange(start, end, device=ids.device)[None]
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            logits_to_keep=slice(w_start - start, w_end - start),
            past_key_values=cache,
        ).logits
        if cache is not None:
            cache.crop(w_start - end)  # drop the current block's keys: it is not finished
        return logits


class LLaDA2Stop:
    """Stopping and finalisation. After each block, rows whose answer holds an EOS stop (official, always on).
    Default mode: the engine's early stop / criteria after each step; sequences are prompt + `max_new_tokens`
    columns padded after each row's first EOS. Official: `eos_early_stop` and the hub return value."""

    def __init__(self, config, criteria) -> None:
        if config.official and criteria:
            raise ValueError("official=True has no stopping criteria / stop_strings.")
        self.official, self.early_stop, self.mask_id = config.official, config.early_stop, config.mask_token_id
        self.eos, self.pad, self.answer_len = as_list(config.eos_token_id), config.pad_token_id, config.max_new_tokens
        self.default = None if config.official else EosStop(config, criteria)
        self.block_eos_stop = not (config.official and config.sampler == "llada2.1") or config.early_stop

    def after_step(self, state, before: torch.Tensor, view: StepView) -> torch.Tensor | None:
        if self.default is not None:
            return self.default.after_step(state, before, view)
        if not self.early_stop:
            return None
        # Official eos_early_stop: an EOS among this step's commits, and no mask between the prompt and the first
        # EOS of the canvas (searched from column 0: an EOS in the prompt counts, a quirk kept).
        start, end = view.window
        after = state.x[0, start:end]
        if not bool(((before[0] == self.mask_id) & (after != self.mask_id) & is_any(after, self.eos)).any()):
            return None
        positions = is_any(state.x[0, :end], self.eos).nonzero().flatten()
        if positions.numel() and bool((state.x[0, state.prompt_len : int(positions[0])] != self.mask_id).all()):
            state.stopped_at = int(positions[0])
            return torch.ones_like(state.rows, dtype=torch.bool)
        return None

    def after_block(self, state, block: Block) -> torch.Tensor | None:
        if not self.eos or not self.block_eos_stop:
            return None
        answer = state.x[state.rows, state.prompt_len : block.end]
        return is_any(answer, self.eos).any(-1)

    def finalise(self, state) -> torch.LongTensor:
        prompt_len, eos = state.prompt_len, self.eos
        x = state.x[:, : prompt_len + self.answer_len]
        answer = x[:, prompt_len:]
        if self.official:
            if state.stopped_at is not None:
                return state.x[:, : state.stopped_at + 1]
            hits = is_any(answer[0], eos).nonzero().flatten() if eos else []
            return answer[:, : int(hits[0]) + 1 if len(hits) else self.answer_len]
        if not eos:
            return x
        is_eos = is_any(answer, eos)
        after_first = (is_eos.cumsum(-1) - is_eos.long()) > 0
        fill = self.pad if self.pad is not None else eos[0]
        return torch.cat([x[:, :prompt_len], answer.masked_fill(after_first, fill)], dim=1)


class EditingSelection(CountThresholdSelection):
    """LLaDA2.1 mask-to-token: masked columns with probability > threshold, else the `num_to_transfer` best. A row's
    block stays open while it has masks, then for up to `max_post_steps` more forwards while edits happen; it closes
    after a forward that fills and edits nothing (`EditingStop` keeps `state.closed`; this reads it)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.count, self.max_post = config.editing("num_to_transfer"), config.editing("max_post_steps")

    def schedule(self, state, block: Block, length: int) -> tuple:
        """No count schedule (`num_to_transfer` each forward); no row's block is closed yet."""
        no_mask = ~(state.x[:, block.start : block.end] == self.mask_id).any(-1)
        active = torch.zeros_like(no_mask).index_fill(0, state.rows, True)
        state.post_steps = (no_mask & active).long()
        state.closed = state.post_steps > self.max_post
        return None, block.end - block.start

    def open(self, state, block: Block, step: int) -> bool:
        return bool((~state.closed[state.rows]).any())

    def select(self, confidence: torch.Tensor, k, view: StepView, length: int) -> torch.Tensor:
        return super().select(confidence, self.count, view, length)


class TokenEditing:
    """LLaDA2.1 token-to-token editing, the revision part: a decided column (neither prompt nor mask: masks are the
    mask-to-token rule's) is rewritten when the proposal differs from its token with probability > `threshold`
    (strict: 0.0 accepts every change, 1.0 none). Columns unmasked in the same step are not edited."""

    def __init__(self, threshold: float, mask_id: int | None = None) -> None:
        self.threshold, self.mask_id = float(threshold), mask_id

    def __call__(self, tokens, proposal, probs, fixed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, W) current tokens, proposal, its probabilities and the non-editable columns -> (columns rewritten,
        the tokens after the edits, edits per row)."""
        edit = ~fixed & (proposal != tokens) & (probs > self.threshold)
        return edit, torch.where(edit, proposal, tokens), edit.sum(-1)

    def revise(self, inp, transfer, proposal, scores, confidence, new_window, view: StepView) -> tuple:
        start, end = view.window
        tokens = inp.x.narrow(1, start, end - start)
        fixed = (tokens == self.mask_id) | inp.prompt_index.narrow(1, start, end - start)
        edit = self(tokens, proposal, confidence, fixed)[0]  # `confidence`: the proposal's probability
        return torch.where(edit, proposal, new_window), None, None, None


class EditingStop(LLaDA2Stop):
    """LLaDA2.1 stopping: closes each row's block on its own (a row whose block closed while others run on has the
    step undone, so it gets its alone answer); default mode: early stop and stopping criteria see only finished
    blocks (the current block can still be edited); official: the block-end EOS stop only with `early_stop`."""

    def __init__(self, config, criteria) -> None:
        super().__init__(config, criteria)
        self.max_post = config.editing("max_post_steps")

    def after_step(self, state, before: torch.Tensor, view: StepView) -> torch.Tensor | None:
        (start, end), rows = view.window, state.rows
        after, closed = state.x[rows, start:end], state.closed[rows]
        after[closed] = before[closed]  # rows whose block closed earlier: this step is undone
        state.x[rows, start:end] = after
        closed |= ~(before == self.mask_id).any(-1) & (after == before).all(-1)  # filled nothing, edited nothing
        post = state.post_steps[rows] + (~(after == self.mask_id).any(-1) & ~closed)
        state.closed[rows], state.post_steps[rows] = closed | (post > self.max_post), post
        if self.default is None or not (self.early_stop or self.default.criteria):
            return None
        state.x[rows, start:end] = self.mask_id  # the stops see the finished blocks only
        finished = self.default.after_step(state, before, view)
        state.x[rows[~finished], start:end] = after[~finished]
        return finished


class LLaDA2GenerationMixin(DiffusionGenerationMixin):
    """The engine's `generate()` with LLaDA2's generation config (which chooses its parts)."""

    diffusion_config_class = LLaDA2GenerationConfig  # also for a saved generation_config.json
