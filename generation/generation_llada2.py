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

from .generation_config import LLaDAGenerationConfig, _check_int
from .generation_llada import DiffusionGenerationMixin
from .generation_parts import (
    Block,
    Confidence,
    EosStop,
    Proposal,
    SamplerParts,
    StepView,
    as_list,
    select_topk,
    temperature_of,
    transfer_schedule,
)


class LLaDA2GenerationConfig(LLaDAGenerationConfig):
    """`LLaDAGenerationConfig` with the LLaDA2.0 sampler's fields and defaults.

    Args:
        official: reproduce the official hub sampler bit for bit, quirks included (see the module docstring).
        block_cache: keep the keys/values of finished blocks (exact under block-causal attention: same tokens as
            recomputing the prefix; default True). `False` recomputes the prefix every step, as the official code.
        minimal_topk: caps the steps per block at `max_new_tokens // minimal_topk` (official meaning).
        steps: steps **per block** (official meaning; default 32). block_length: default 32. threshold: commit every
            masked column whose confidence is > threshold when they are at least the step's count (default 0.95;
            `None` = the count schedule alone).
    """

    _diffusion_defaults = {
        **LLaDAGenerationConfig._diffusion_defaults,
        **dict(steps=32, block_length=32, threshold=0.95, minimal_topk=1, official=False, block_cache=True),
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

    def sampler_parts(self, logits_processor=None, stopping_criteria=None) -> SamplerParts:
        """The LLaDA2.0 sampler (the module docstring lists each part)."""
        stopping = LLaDA2Stop(self, stopping_criteria)
        return SamplerParts(
            layout=AbsoluteBlocks(self),
            proposal=LLaDA2Proposal(self, logits_processor),
            confidence=Confidence(self, temperature=0.0),  # the drawn token's probability (remasking low_confidence)
            selection=CountThresholdSelection(self),
            revision=None,
            stopping=stopping,
            finalise=stopping.finalise,
        )


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
    temperature 0 unless official); the draw happens here, after the forward (the official order)."""

    def __init__(self, config, logits_processor=None) -> None:
        super().__init__(config, logits_processor, temperature=0.0, warp_as_mask=False)
        self.official, self.top_k, self.top_p = config.official, config.top_k, config.top_p
        self.sample_temperature = temperature_of(config)
        if self.official and config.temperature is not None:
            self.sample_temperature = float(config.temperature)  # official: `temperature` alone, do_sample unused

    def draw(self, rows, length, view, vocab, device, generator=None):
        return generator  # nothing drawn ahead: propose() draws with it

    def propose(self, logits: torch.Tensor, x: torch.Tensor, view: StepView, generator) -> tuple:
        """(x0, scores) with softmax(scores) the proposal distribution (the confidence rule reads it back)."""
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

    def schedule(self, x: torch.Tensor, block: Block, length: int) -> tuple:
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

    def canvas_length(self, prompt_len: int, max_new_tokens: int) -> int:
        return -(-(prompt_len + max_new_tokens) // self.block_length) * self.block_length

    def logits_width(self, prompt_len: int, length: int) -> int:
        return self.block_length

    def make_cache(self) -> DynamicCache | None:
        return DynamicCache() if self.config.block_cache else None

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
        steps = min(config.steps, gen_len // config.minimal_topk)
        if steps < 1:
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

    def after_step(self, state, before: torch.Tensor, view: StepView) -> torch.Tensor | None:
        if self.default is not None:
            return self.default.after_step(state, before, view)
        if not self.early_stop:
            return None
        # Official eos_early_stop: an EOS among this step's commits, and no mask between the prompt and the first
        # EOS of the canvas (searched from column 0: an EOS in the prompt counts, a quirk kept).
        (start, end), eos = view.window, torch.tensor(self.eos, device=state.x.device)
        after = state.x[0, start:end]
        if not bool(((before[0] == self.mask_id) & (after != self.mask_id) & torch.isin(after, eos)).any()):
            return None
        positions = torch.isin(state.x[0, :end], eos).nonzero().flatten()
        if positions.numel() and bool((state.x[0, state.prompt_len : int(positions[0])] != self.mask_id).all()):
            state.stopped_at = int(positions[0])
            return torch.ones_like(state.rows, dtype=torch.bool)
        return None

    def after_block(self, state, block: Block) -> torch.Tensor | None:
        if not self.eos:
            return None
        answer = state.x[state.rows, state.prompt_len : block.end]
        return torch.isin(answer, torch.tensor(self.eos, device=answer.device)).any(-1)

    def finalise(self, state) -> torch.LongTensor:
        prompt_len, eos = state.prompt_len, self.eos
        x = state.x[:, : prompt_len + self.answer_len]
        answer = x[:, prompt_len:]
        if self.official:
            if state.stopped_at is not None:
                return state.x[:, : state.stopped_at + 1]
            hits = torch.isin(answer[0], torch.tensor(eos, device=x.device)).nonzero().flatten() if eos else []
            return answer[:, : int(hits[0]) + 1 if len(hits) else self.answer_len]
        if not eos:
            return x
        is_eos = torch.isin(answer, torch.tensor(eos, device=x.device))
        after_first = (is_eos.cumsum(-1) - is_eos.long()) > 0
        fill = self.pad if self.pad is not None else eos[0]
        return torch.cat([x[:, :prompt_len], answer.masked_fill(after_first, fill)], dim=1)


class LLaDA2GenerationMixin(DiffusionGenerationMixin):
    """The engine's `generate()` with LLaDA2's generation config (which chooses its parts)."""

    diffusion_config_class = LLaDA2GenerationConfig  # also for a saved generation_config.json
