"""The LLaDA2.0 and LLaDA2.1 samplers as a strategy of the diffusion engine: `LLaDA2GenerationConfig`,
`LLaDA2Sampler` / `LLaDA21Sampler` (+ the `TokenEditing` part) and `LLaDA2GenerationMixin` (the engine's `generate()`
loop, with the LLaDA2 block plan, schedule, attention and stops).

The official sampler (the `generate()` of the hub `modeling_llada2_moe.py`) differs from the LLaDA-8B one:

* Blocks are aligned to absolute positions (block b covers columns [b * block_length, (b + 1) * block_length) of the
  canvas, whose length is rounded up to a whole number of blocks); the first block holds the prompt's tail.
* Attention is block-causal (a block sees itself and every earlier block) and each step runs the prefix up to the
  current block's end only; logits are taken for the block's columns.
* `steps` is the number of steps **per block**, capped at `max_new_tokens // minimal_topk`; step s commits
  n_s = block_length // steps (+1 for the first block_length % steps steps) tokens, or, when more than n_s masked
  columns have confidence > `threshold`, all of those; a block ends after `steps` steps or when it has no mask.
* The proposal is a multinomial draw from softmax(logits / temperature) after `top_k` then `top_p`; the confidence is
  the drawn token's probability under that same distribution.
* After each block, generation stops if the answer holds an EOS; the answer is cut after its first EOS.

The exact block KV cache (`block_cache=True`, the default; `False` recomputes the prefix every step as the official
code does): under block-causal attention the keys/values of a finished block depend only on that block and earlier
ones, so they never change once its last token is committed. The cache keeps them (post-RoPE, per layer): the first
step of a block runs the previous block (now finished, its keys are stored) and the current one; every other step
runs the current block alone against the stored keys. Same queries, same keys, same mask: the tokens are those of
the uncached sampler (tested token for token on the golden model, `official=True` included).

Left-padded batches (default mode): one call's block grid is shared and aligned at column 0 of the padded canvas, so
a row sees the grid it has alone only when its padding is a whole number of blocks. `generate()` therefore splits a
batch by padding % block_length (per-row alignment): one engine call per distinct alignment, each with that many
padding columns trimmed, outputs merged back in row order; every row gets its alone answer. With a streamer or
`return_dict_in_generate` / `output_scores` / `output_logits` / `output_history` the outputs cannot be merged: the
batch then runs on one shared grid (warned), and rows whose padding is not a whole number of blocks get a valid LLaDA2
sampling that is not their alone answer.

Two modes (the generation-config field `official`):

* `official=False` (default) does what users mean: greedy (argmax) at temperature 0 / `do_sample=False`, the
  engine's processors and warpers (`top_k`, `top_p`, `min_p`, ...) at temperature > 0, any batch size with left
  padding (padding is masked out and positions start at each row's first real token), and `sequences` in the
  transformers shape: prompt + `max_new_tokens` columns, the columns after a row's first EOS filled with
  `pad_token_id` (EOS if unset). `early_stop=True` stops a row as soon as its answer is final up to an EOS.
* `official=True` reproduces the hub `generate()` token for token (batch 1; seeded CPU runs draw the same random
  numbers), quirks included: **temperature 0 still samples** (`torch.multinomial` from softmax(logits): there is no
  greedy branch), and the return value is the official one: the new tokens only, cut after the first EOS, except that
  with `early_stop=True` (the official `eos_early_stop`) an EOS committed mid-block whose answer has no mask before it
  returns `canvas[:, :eos + 1]`, **the prompt included** (the EOS is searched from column 0, prompt included).

Official keyword names map to: `gen_length` -> `max_new_tokens`, `eos_id` -> `eos_token_id`, `mask_id` ->
`mask_token_id`, `eos_early_stop` -> `early_stop`; `steps`, `block_length`, `threshold`, `minimal_topk`,
`temperature`, `top_k`, `top_p` keep their names (and official defaults: 32, 32, 0.95, 1); so do the 2.1 fields
`editing_threshold`, `max_post_steps`, `num_to_transfer` (defaults 0.9, 16, 1).

LLaDA2.1 (`sampler="llada2.1"`; same architecture and config.json as 2.0, so the user chooses): every forward proposes
the block, commits the masked columns with probability > `threshold` (else the `num_to_transfer` best), and
`TokenEditing` rewrites decided answer columns of the block whose proposal differs with probability >
`editing_threshold`; once the block has no mask it gets up to `max_post_steps` more forwards while edits happen, and
closes after a forward that fills nothing and edits nothing. `steps` and `minimal_topk` have no effect. With
`official=True` it is the hub `generate()` token for token and forward for forward (batch 1): its 0/1 mask **added**
to the attention scores (not block-causal; no cache is exact under it, so `block_cache` is not used), temperature 0 =
argmax (2.1 has that branch), one multinomial draw per forward at T > 0 (post-mask forwards too), the mask id not
banned, the block-end EOS stop only with `early_stop`, and the new tokens cut after the first EOS returned.
Default mode follows the intent where the text differs:

* block-causal attention (0/-inf, as 2.0): a block never sees later (all-mask) blocks, and the exact block cache
  works (`block_cache=True`): editing only touches the current block, so finished blocks' keys never change;
* greedy at temperature 0, the engine's processors and warpers at T > 0 (as 2.0's default mode);
* the mask id is never proposed (a committed mask would reopen the block);
* rows of a batch close their blocks on their own (a row whose block closed while others run on has that step undone),
  so each row gets its alone answer; after each block, rows whose answer holds an EOS stop (as 2.0);
* `early_stop` and stopping criteria see only finished blocks (the current block can still be edited);
* `sequences` in the transformers shape (prompt + `max_new_tokens`, padded after the first EOS).
"""

import copy
import warnings

import torch
import torch.nn.functional as F
from transformers.generation.logits_process import LogitsProcessorList

from .generation_llada import (
    BlockView,
    DiffusionGenerationMixin,
    DiffusionSampler,
    LLaDAGenerationConfig,
    StepOutput,
    _as_list,
    _check_choice,
    _check_int,
    _check_number,
    low_confidence,
    select_topk,
)


class LLaDA2GenerationConfig(LLaDAGenerationConfig):
    """`LLaDAGenerationConfig` with the LLaDA2.0 sampler's fields and defaults.

    Args:
        official: reproduce the official hub sampler bit for bit, quirks included (see the module docstring).
        block_cache: keep the keys/values of finished blocks (exact under block-causal attention: same tokens as
            recomputing the prefix; default True). `False` recomputes the prefix every step, as the official code.
        minimal_topk: caps the steps per block at `max_new_tokens // minimal_topk` (official meaning; llada2.1: none).
        sampler: `"llada2.0"` (default) or `"llada2.1"` (mask-to-token plus token-to-token editing, see
            `TokenEditing`; LLaDA2.1-mini/flash have LLaDA2.0's architecture, so the sampler is the user's choice).
        editing_threshold / max_post_steps / num_to_transfer: the llada2.1 fields (defaults 0.9 / 16 / 1 when None):
            rewrite a committed answer token of the block whose new prediction has probability > editing_threshold
            (1.0: no editing); up to max_post_steps more forwards once the block has no mask while edits happen;
            commit at least num_to_transfer masks per forward (the llada2.1 count; `steps` has no effect there).
        steps: steps **per block** (official meaning; default 32). block_length: default 32. threshold: commit every
            masked column whose confidence is > threshold when they are at least the step's count (default 0.95;
            `None` = the count schedule alone).
    """

    _diffusion_defaults = {
        **LLaDAGenerationConfig._diffusion_defaults,
        "steps": 32,
        "block_length": 32,
        "threshold": 0.95,
        "minimal_topk": 1,
        "official": False,
        "block_cache": True,
        "sampler": "llada2.0",
        "editing_threshold": None,
        "max_post_steps": None,
        "num_to_transfer": None,
    }

    def validate(self, strict: bool = False, user_set_attributes: set[str] | None = None):
        super().validate(strict=strict, user_set_attributes=user_set_attributes)
        validate_llada2(self)


SAMPLERS = ("llada2.0", "llada2.1")
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


def validate_llada2(config) -> None:
    """The LLaDA2 fields, and a named error for every engine option this sampler does not honour."""
    for name, (default, reason) in LLADA2_UNSUPPORTED.items():
        if getattr(config, name, default) != default:
            raise ValueError(f"LLaDA2 generate() does not support {name}={getattr(config, name)!r}: {reason}.")
    _check_int("minimal_topk", getattr(config, "minimal_topk", 1), low=1)
    for name in ("official", "block_cache"):
        if not isinstance(getattr(config, name, False), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(config, name)!r}.")
    if config.steps is None or config.block_length is None:
        raise ValueError("LLaDA2 generate() needs steps (per block) and block_length.")
    sampler = getattr(config, "sampler", "llada2.0")
    _check_choice("sampler", sampler, SAMPLERS)
    if sampler == "llada2.0":
        for name in EDITING_DEFAULTS:
            if getattr(config, name, None) is not None:
                raise ValueError(
                    f"{name} is a token-editing field of sampler='llada2.1'; sampler='llada2.0' would ignore it. "
                    "Pass sampler='llada2.1' (LLaDA2.1 checkpoints) or drop it."
                )
        return
    _check_number("editing_threshold", getattr(config, "editing_threshold", None), low=0.0, high=1.0, optional=True)
    _check_int("max_post_steps", getattr(config, "max_post_steps", None), low=0, optional=True)
    _check_int("num_to_transfer", getattr(config, "num_to_transfer", None), low=1, optional=True)
    if getattr(config, "compile", False):
        raise ValueError("compile is not supported with sampler='llada2.1' (its editing step is not compiled).")


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


class BlockKVCache:
    """Keys/values (post-RoPE, per layer) of the finished blocks' columns [0, end) of the active rows.

    A forward over the columns [start, q_end) with `start == end` (the first uncached column) reads the stored keys
    before its fresh ones; `store` > 0 appends the first `store` fresh columns (those of blocks that are finished)."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.end, self.store = 0, 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args) -> tuple[torch.Tensor, ...]:
        if layer_idx in self.keys:
            key = torch.cat([self.keys[layer_idx], key], dim=2)
            value = torch.cat([self.values[layer_idx], value], dim=2)
        if self.store:
            self.keys[layer_idx] = key[:, :, : self.end + self.store]
            self.values[layer_idx] = value[:, :, : self.end + self.store]
        return key, value

    def select(self, keep: torch.Tensor) -> None:
        """Keep these rows (a boolean mask or indices over the rows the cache holds)."""
        for layer_idx in self.keys:
            self.keys[layer_idx] = self.keys[layer_idx][keep]
            self.values[layer_idx] = self.values[layer_idx][keep]


class LLaDA2Sampler(DiffusionSampler):
    """The engine's sampler with the LLaDA2 forward (block-causal prefix), proposal (multinomial from the tempered,
    filtered softmax; argmax at temperature 0 unless official) and selection (count schedule with threshold)."""

    def __new__(cls, model, config, *args, **kwargs):
        # LLaDA2.1 glue: the config's `sampler` picks the editing sampler.
        if cls is LLaDA2Sampler and getattr(config, "sampler", "llada2.0") == "llada2.1":
            cls = LLaDA21Sampler
        return super().__new__(cls)

    def __init__(self, model, config, logits_processor=None, cache=None) -> None:
        super().__init__(model, config, logits_processor, cache)
        self.official = bool(getattr(config, "official", False))
        self.threshold = config.threshold
        # The engine's Gumbel proposal is replaced by the multinomial one: the base class sees temperature 0 (its
        # `propose()` then returns the processed logits; no Gumbel noise is drawn) and no warpers.
        self.sample_temperature = self.temperature
        if self.official and config.temperature is not None:
            self.sample_temperature = float(config.temperature)  # official: `temperature` alone, do_sample unused
        self.sample_warpers = self.warpers
        self.temperature, self.warpers = 0.0, LogitsProcessorList()
        self.generator = None
        self.block_cache = getattr(config, "_llada2_cache", None)

    def draw_noise(self, rows, length, view, device, generator=None):
        """No noise is drawn ahead: the multinomial draw happens in `propose()` (the official order), with this
        generator (or the global RNG)."""
        self.generator = generator
        return None, None

    def logits(self, inp, view: BlockView) -> torch.Tensor:
        """One forward with the block-causal mask (and padding); the window's logits. Uncached: over the prefix
        [0, block_end). Cached: over the columns not cached yet, [cache.end, block_end), reading the stored keys of
        the finished blocks; the columns before the window (finished now) are stored."""
        end = view.block_end
        (w_start, w_end), block_length = view.window, self.config.block_length
        cache = self.block_cache
        start = cache.end if cache is not None else 0
        if cache is not None:
            cache.store = w_start - start
        ids = inp.x[:, start:end]
        mask = block_causal_mask(end, block_length, ids.device)[None, None, start:end]
        if inp.attention_mask is not None:
            keep = inp.attention_mask[:, :end].bool()
            eye = torch.eye(end, dtype=torch.bool, device=ids.device)[start:end]
            mask = mask & keep[:, None, None, :] | eye
            position_ids = (inp.attention_mask[:, :end].cumsum(-1) - 1).clamp(min=0)[:, start:end]
        else:
            position_ids = torch.arange(start, end, device=ids.device)[None]
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            logits_to_keep=slice(w_start - start, w_end - start),
            past_key_values=cache,
        ).logits
        if cache is not None:
            cache.end, cache.store = cache.end + cache.store, 0
        return logits

    def propose(self, logits: torch.Tensor, x: torch.Tensor, view: BlockView, uniform) -> tuple:
        """(x0, scores) with softmax(scores) the proposal distribution (the confidence rule reads it back)."""
        _, scores = super().propose(logits, x, view, None)  # EOS bans and processors; no sampling
        temperature = self.sample_temperature
        if self.official:
            if temperature > 0 and temperature != 1.0:
                scores = scores / temperature
            scores = official_top_p(official_top_k(scores, self.config.top_k), self.config.top_p)
        elif temperature == 0:
            return scores.argmax(-1), scores
        else:
            batch, width, vocab = scores.shape
            flat = scores.reshape(batch * width, vocab) / temperature
            if self.sample_warpers:
                flat = self.sample_warpers(x.repeat_interleave(width, dim=0), flat)
            scores = flat.reshape(batch, width, vocab)
        probs = F.softmax(scores, dim=-1)
        tokens = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=self.generator)
        return tokens.view(probs.shape[:-1]), scores

    def select(self, confidence: torch.Tensor, k, view: BlockView, length: int) -> torch.Tensor:
        """All masked columns with confidence > threshold if they are at least k, else the k best (at most all)."""
        candidates = confidence > -torch.inf
        above = candidates & (confidence > self.threshold) if self.threshold is not None else candidates & False
        n_above, n_candidates = above.sum(-1), candidates.sum(-1)
        if confidence.shape[0] == 1:  # the official per-row call: one `topk` with a host int (same pick among ties)
            n = min(k, int(n_candidates))
            best = select_topk(confidence, n)
        else:
            best = select_topk(confidence, n_candidates.clamp(max=k), min(k, confidence.shape[1]))
        return torch.where((n_above >= k)[:, None], above, best)


class TokenEditing:
    """LLaDA2.1 token-to-token editing, one self-contained part: which already-decoded columns to rewrite.

    A column is rewritten when it is editable (neither prompt nor mask: masks are the mask-to-token rule's), the
    proposal differs from its current token, and the proposal's probability is > `threshold` (strict: 0.0 accepts
    every change, 1.0 none). Columns unmasked in the same step are not edited (they were masks when proposed)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(
        self, tokens: torch.Tensor, proposal: torch.Tensor, probs: torch.Tensor, fixed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, W) current tokens, proposal, its probabilities and the non-editable columns (prompt or mask) ->
        (columns rewritten (B, W) bool, the tokens after the edits (B, W), edits per row (B,))."""
        edit = ~fixed & (proposal != tokens) & (probs > self.threshold)
        return edit, torch.where(edit, proposal, tokens), edit.sum(-1)


class LLaDA21Sampler(LLaDA2Sampler):
    """The LLaDA2.1 step: LLaDA2's forward and proposal, mask-to-token (masked columns with probability > threshold,
    else the `num_to_transfer` best) plus `TokenEditing` on the block's decoded columns, committed together."""

    def __init__(self, model, config, logits_processor=None, cache=None) -> None:
        super().__init__(model, config, logits_processor, cache)
        editing_threshold, self.num_to_transfer = (
            EDITING_DEFAULTS[name] if getattr(config, name, None) is None else getattr(config, name)
            for name in ("editing_threshold", "num_to_transfer")
        )
        self.editing = TokenEditing(editing_threshold)

    def logits(self, inp, view: BlockView) -> torch.Tensor:
        """Default: LLaDA2's block-causal forward (cached or not). Official: the 2.1 text's mask, 0/1 **added** to
        the attention scores (not block-causal: earlier blocks see later ones at weight e^-1), over [0, block_end)."""
        if not self.official:
            return super().logits(inp, view)
        end, (w_start, w_end) = view.block_end, view.window
        ids = inp.x[:, :end]
        mask = block_causal_mask(end, self.config.block_length, ids.device).to(self.model.dtype)[None, None]
        position_ids = torch.arange(end, device=ids.device)[None]
        return self.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=slice(w_start, w_end)
        ).logits

    def propose(self, logits: torch.Tensor, x: torch.Tensor, view: BlockView, uniform) -> tuple:
        """Temperature 0 is argmax in both modes (2.1 has a greedy branch); default mode never proposes the mask id
        (a committed mask would reopen the block)."""
        if self.official:
            if self.sample_temperature == 0:
                return logits.argmax(-1), logits
            return super().propose(logits, x, view, uniform)
        logits = logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device), -torch.inf)
        return super().propose(logits, x, view, uniform)

    def step(self, inp, k, noise, view: BlockView) -> StepOutput:
        """Forward, propose, mask-to-token selection, token-to-token editing, commit both (one step, the window)."""
        start, end = view.window
        logits = self.logits(inp, view)
        tokens = inp.x[:, start:end]
        x0, scores = self.propose(logits, inp.x, view, None)
        probs = low_confidence(scores, x0)
        is_mask = tokens == self.mask_id
        unmask = self.select(torch.where(is_mask, probs, -torch.inf), self.num_to_transfer, view, inp.x.shape[1])
        _, edited, _ = self.editing(tokens, x0, probs, is_mask | inp.prompt_index[:, start:end])
        return StepOutput(torch.where(unmask, x0, edited), None, None, None, logits, scores)


class LLaDA2GenerationMixin(DiffusionGenerationMixin):
    """The engine's `generate()` with the LLaDA2 block plan, per-block schedule, block stop and return value."""

    diffusion_config_class = LLaDA2GenerationConfig  # also for a saved generation_config.json
    diffusion_sampler_class = LLaDA2Sampler

    #: generate() options whose outputs cannot be merged across the per-alignment calls (shared grid then, warned).
    _UNGROUPABLE = ("streamer", "return_dict_in_generate", "output_scores", "output_logits", "output_history")

    def generate(self, inputs=None, generation_config=None, attention_mask=None, **kwargs):
        """The engine's `generate()`; a left-padded batch whose rows' padding differ by other than whole blocks is
        split by padding % block_length (one call per alignment, each trimmed of that many padding columns), so every
        row runs on the block grid it has alone and gets its alone answer (default mode; each call is cached)."""
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        groups = None
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and isinstance(attention_mask, torch.Tensor):
            input_ids, attention_mask = self._left_pad(input_ids, attention_mask)
            groups = self._alignment_groups(attention_mask, generation_config, kwargs)
        if groups is None:
            return super().generate(input_ids, generation_config, attention_mask=attention_mask, **kwargs)
        prompt_len = input_ids.shape[1]
        if "max_length" in kwargs and "max_new_tokens" not in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_length") - prompt_len
        parts, width = {}, None
        for residue, rows in groups:
            out = super().generate(
                input_ids[rows, residue:], generation_config, attention_mask=attention_mask[rows, residue:], **kwargs
            )
            copies = out.shape[0] // len(rows)  # num_return_sequences
            prefix = input_ids[rows, :residue].repeat_interleave(copies, dim=0).to(out.device)
            out = torch.cat([prefix, out], dim=1).view(len(rows), copies, -1)
            width = out.shape[-1]
            parts.update({row: out[i] for i, row in enumerate(rows.tolist())})
        return torch.stack([parts[row] for row in range(input_ids.shape[0])]).reshape(-1, width)

    def _alignment_groups(self, attention_mask, generation_config, kwargs):
        """[(residue, rows)] when the rows' left padding differs by other than whole blocks, else None."""
        base = generation_config if generation_config is not None else self.generation_config
        block_length = kwargs.get("block_length", getattr(base, "block_length", None))
        if kwargs.get("official", getattr(base, "official", False)) or not block_length:
            return None
        residues = (~attention_mask.bool()).sum(-1) % block_length
        if residues.unique().numel() == 1:
            return None
        if any(kwargs.get(name) or getattr(base, name, False) for name in self._UNGROUPABLE):
            warnings.warn(
                "LLaDA2 generate(): rows whose padding differs by other than whole blocks share one block grid here "
                f"(with {', '.join(self._UNGROUPABLE)} the per-alignment calls are not merged): they may not get "
                "their alone answers. Pad to a multiple of block_length.",
                stacklevel=3,
            )
            return None
        return [(int(r), (residues == r).nonzero().flatten()) for r in residues.unique()]

    def _check_diffusion_inputs(self, input_ids, attention_mask, config) -> list[tuple[int, int, int]]:
        """Validate; round the canvas up to whole blocks; return the absolute block plan from the prompt's block."""
        validate_llada2(config)
        if config.official and input_ids.shape[0] != 1:
            raise ValueError("official=True reproduces the official sampler, which takes one prompt (batch 1).")
        if config.official and attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("official=True takes no padding (the official sampler has no attention mask).")
        generic = copy.copy(config)  # the engine's generic checks (ids, mask token, padding); not its step rules
        generic.threshold = generic.steps = generic.block_length = None
        generic._steps_per_token = None  # LLaDA2 steps are per block: a new canvas length needs no rescaling
        super()._check_diffusion_inputs(input_ids, attention_mask, generic)
        prompt_len, gen_len, block_length = input_ids.shape[1], config.max_new_tokens, config.block_length
        if gen_len == 0:
            raise ValueError("max_new_tokens must be > 0.")
        num_blocks = -(-(prompt_len + gen_len) // block_length)
        config._answer_length = gen_len
        config.max_new_tokens = num_blocks * block_length - prompt_len  # the official canvas: whole blocks
        editing = config.sampler == "llada2.1"
        steps = 0 if editing else min(config.steps, gen_len // config.minimal_topk)  # 2.1: `_block_open` decides
        if steps < 1 and not editing:
            raise ValueError(f"minimal_topk ({config.minimal_topk}) > max_new_tokens ({gen_len}): no step left.")
        config._llada2_steps = steps
        config._llada2_return_prompt = None
        # LLaDA2.1 glue: the official 2.1 mask is not block-causal, so no cache is exact there (prefix recomputed).
        exact = not (editing and config.official)
        config._llada2_cache = BlockKVCache() if config.block_cache and exact else None
        first = prompt_len // block_length
        return [(b * block_length, (b + 1) * block_length, steps) for b in range(first, num_blocks)]

    def _plan_block(self, state, config, block_start, block_end, steps, length):
        """Query the prefix up to the block end; window the block; the count schedule comes from block_length."""
        block_length = block_end - block_start
        if config.sampler == "llada2.1":  # LLaDA2.1 glue: the sampler's num_to_transfer is the count
            counts, k_max = None, block_length
        else:
            counts = [block_length // steps + (s < block_length % steps) for s in range(steps)]
            k_max = max(counts)
        view = BlockView(
            query=(0, block_end), window=(block_start, block_end), block_end=block_end, prompt_len=state.prompt_len,
            k_max=k_max, allow_remask=False,
        )  # fmt: skip
        state.llada2_block = (block_start, block_end)
        return view, counts

    def _block_open(self, state, config, block_end, step, steps) -> bool:
        """`steps` steps or until no row has a mask in the block; when the block closes, rows whose answer holds an
        EOS stop (official, always on)."""
        if config.sampler == "llada2.1":  # LLaDA2.1 glue
            if self._editing_block_open(state, config, block_end, step):
                return True
            if not config.official or config.early_stop:  # official 2.1: the block-end EOS stop is eos_early_stop's
                self._eos_stop(state, config, block_end)
            return False
        block_start = state.llada2_block[0]
        window = state.x[state.rows, block_start:block_end]
        if step < steps and bool((window == config.mask_token_id).any()):
            state.llada2_before = window.clone()
            return True
        self._eos_stop(state, config, block_end)
        return False

    # -- LLaDA2.1 glue (token editing): the block's stop rule and the stops that must not see editable tokens -------

    @staticmethod
    def _editing_block_open(state, config, block_end, step) -> bool:
        """A row's block stays open while it has masks, then for up to `max_post_steps` more forwards while edits
        happen; it closes after a forward with no mask to fill and no edit. Per row (full-batch tensors on the state):
        a row whose block closed while others run on has that step's changes undone, so it gets its alone answer."""
        block = state.x[:, state.llada2_block[0] : block_end]
        active = torch.zeros(block.shape[0], dtype=torch.bool, device=block.device)
        active[state.rows] = True
        if step == 0:
            state.llada21_post = torch.zeros(block.shape[0], dtype=torch.long, device=block.device)
            state.llada21_closed = torch.zeros_like(active)
        else:
            before, closed = state.llada21_before, state.llada21_closed
            block[closed] = before[closed]
            idle = ~(before == config.mask_token_id).any(-1) & (block == before).all(-1)
            closed |= idle & active
        closed, no_mask = state.llada21_closed, ~(block == config.mask_token_id).any(-1)
        state.llada21_before = block.clone()
        state.llada21_post += no_mask & active & ~closed
        max_post = config.max_post_steps if config.max_post_steps is not None else EDITING_DEFAULTS["max_post_steps"]
        closed |= state.llada21_post > max_post
        return bool((active & ~closed).any())

    def _editing_stop_rows(self, state, config, criteria, schedule):
        """Default mode: early stop and stopping criteria see only the finished blocks (the current block's tokens
        can still be edited): the block is masked while they run, then put back for the rows that go on."""
        if config.official:
            if criteria:
                raise ValueError("official=True has no stopping criteria / stop_strings.")
            return schedule
        if not (config.early_stop or criteria):
            return schedule
        block_start, block_end = state.llada2_block
        saved, rows = state.x[:, block_start:block_end].clone(), state.rows
        state.x[:, block_start:block_end] = config.mask_token_id
        schedule = self._default_stop_rows(state, config, criteria, schedule)
        keep = torch.ones(saved.shape[0], dtype=torch.bool, device=saved.device)
        keep[rows[~torch.isin(rows, state.rows)]] = False  # rows stopped now: their tail is EOS
        state.x[keep, block_start:block_end] = saved[keep]
        return schedule

    # -- end of the LLaDA2.1 glue -------------------------------------------------------------------------------------

    def _eos_stop(self, state, config, block_end) -> None:
        """When a block closes, rows whose answer holds an EOS stop."""
        eos = _as_list(config.eos_token_id)
        if eos and state.rows.numel():
            answer = state.x[state.rows, state.prompt_len : block_end]
            done = torch.isin(answer, torch.tensor(eos, device=answer.device)).any(-1)
            state.rows = state.rows[~done]
            state.extra = state.extra[~done]
            if config._llada2_cache is not None:
                config._llada2_cache.select(~done)

    def _default_stop_rows(self, state, config, criteria, schedule):
        """The engine's stops (early stop, criteria); the block cache keeps the rows that go on."""
        rows = state.rows
        schedule = super()._stop_rows(state, config, criteria, schedule)
        if config._llada2_cache is not None and state.rows.numel() != rows.numel():
            config._llada2_cache.select(torch.isin(rows, state.rows))
        return schedule

    def _stop_rows(self, state, config, criteria, schedule):
        if config.sampler == "llada2.1":  # LLaDA2.1 glue
            return self._editing_stop_rows(state, config, criteria, schedule)
        if not config.official:
            return self._default_stop_rows(state, config, criteria, schedule)
        if criteria:
            raise ValueError("official=True has no stopping criteria / stop_strings.")
        if not config.early_stop or state.rows.numel() == 0:
            return schedule
        # Official eos_early_stop: an EOS among this step's commits, and no mask between the prompt and the first
        # EOS of the canvas (searched from column 0: an EOS in the prompt counts, a quirk kept).
        (block_start, block_end), mask_id = state.llada2_block, config.mask_token_id
        eos = _as_list(config.eos_token_id)
        after = state.x[0, block_start:block_end]
        new = (state.llada2_before[0] == mask_id) & (after != mask_id)
        if not bool((new & torch.isin(after, torch.tensor(eos, device=after.device))).any()):
            return schedule
        positions = torch.isin(state.x[0, :block_end], torch.tensor(eos, device=after.device)).nonzero().flatten()
        if positions.numel():
            first = int(positions[0])
            if bool((state.x[0, state.prompt_len : first] != mask_id).all()):
                config._llada2_return_prompt = first
                state.rows = state.rows[:0]
                state.extra = state.extra[:0]
        return schedule

    def _diffusion_sequences(self, state, config) -> torch.LongTensor:
        """Official: the hub return value. Default: prompt + max_new_tokens, padded after each row's first EOS."""
        config._llada2_cache = None  # free the stored keys/values
        prompt_len, answer_len = state.prompt_len, config._answer_length
        eos = _as_list(config.eos_token_id)
        x = state.x[:, : prompt_len + answer_len]
        if config.official:
            if config._llada2_return_prompt is not None:
                return state.x[:, : config._llada2_return_prompt + 1]
            answer = x[:, prompt_len:]
            hits = torch.isin(answer[0], torch.tensor(eos, device=x.device)).nonzero().flatten() if eos else []
            return answer[:, : int(hits[0]) + 1 if len(hits) else answer_len]
        if not eos:
            return x
        answer = x[:, prompt_len:]
        is_eos = torch.isin(answer, torch.tensor(eos, device=x.device))
        after_first = (is_eos.cumsum(-1) - is_eos.long()) > 0
        fill = config.pad_token_id if config.pad_token_id is not None else eos[0]
        return torch.cat([x[:, :prompt_len], answer.masked_fill(after_first, fill)], dim=1)


__all__ = [
    "BlockKVCache",
    "LLaDA2GenerationConfig",
    "LLaDA2GenerationMixin",
    "LLaDA21Sampler",
    "LLaDA2Sampler",
    "TokenEditing",
    "block_causal_mask",
    "official_top_k",
    "official_top_p",
]
