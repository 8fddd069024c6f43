"""LLaDA's layout (`RelativeBlocks`): the block plan relative to the prompt, the bidirectional forward (windowed
logits), and the Fast-dLLM window cache (`DiffusionKVCache`, a transformers `Cache` with in-place buffers)."""

import math

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .generation_parts import Block, StepView, classifier_free_guidance


class _WindowLayer(DynamicLayer):
    """One layer's keys/values of the whole canvas, in a buffer allocated at the refresh and written in place."""

    def update(self, key, value, cache_kwargs=None) -> tuple[torch.Tensor, torch.Tensor]:
        refresh, start, end = cache_kwargs["refresh"], cache_kwargs["start"], cache_kwargs["end"]
        if refresh and (not self.is_initialized or self.keys.shape != key.shape):
            self.keys, self.values, self.device = torch.empty_like(key), torch.empty_like(value), key.device
            self.is_initialized = True
        target = slice(None) if refresh else slice(start, end)
        self.keys[:, :, target].copy_(key)
        self.values[:, :, target].copy_(value)
        return self.keys, self.values


class DiffusionKVCache(Cache):
    """Keys/values (after RoPE) of the whole canvas, per layer, for Fast-dLLM-style prefix and dual caching.

    A refresh forward (query = the whole canvas) stores them. A cached forward runs only the query columns
    [start, end): their fresh keys/values are written in place into static-shaped buffers and attention reads every
    column from them, so columns outside the query use keys/values computed when the canvas was more masked
    (approximate by design). Positions are absolute canvas columns, so stored post-RoPE keys never need re-rotation.
    """

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=_WindowLayer)
        self.refresh, self.start, self.end = True, 0, None

    def begin(self, refresh: bool, start: int, end: int) -> None:
        self.refresh, self.start, self.end = refresh, start, end

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        window = {"refresh": self.refresh, "start": self.start, "end": self.end}
        return super().update(key_states, value_states, layer_idx, window)


def _columns(start: int, end: int, device) -> slice | torch.Tensor:
    """Columns whose logits are kept: a slice (a view) in eager mode; an index tensor under torch.compile, where a
    slice would make dynamo specialise on the block's offsets and recompile for every block."""
    return torch.arange(start, end, device=device) if torch.compiler.is_compiling() else slice(start, end)


def scaled_steps(steps_per_token: float, tokens: int, num_blocks: int) -> int:
    """Steps for a `tokens`-long canvas at a checkpoint's `steps_per_token`: the nearest multiple of `num_blocks`
    (half up) between `num_blocks` and `tokens`, so every block gets the same number of steps, each committing one
    token or more."""
    per_block = math.floor(tokens * steps_per_token / num_blocks + 0.5)
    return num_blocks * min(max(per_block, 1), tokens // num_blocks)


class RelativeBlocks:
    """LLaDA's layout: `max_new_tokens // block_length` blocks after the prompt, `steps` split evenly among them; a
    bidirectional forward over the canvas (logits on the block only with `fast`), or the Fast-dLLM caches: a refresh
    at each block's first step, then the block alone (`dual`) or the block and everything after it (`prefix`)."""

    def __init__(self, config) -> None:
        self.config, self.cached = config, config.cache != "none"
        self.windowed = config.fast or self.cached

    def canvas_length(self, prompt_len: int, max_new_tokens: int) -> int:
        return prompt_len + max_new_tokens

    def logits_width(self, prompt_len: int, length: int) -> int:
        """The widest window a step computes logits on (the memory pre-check's, before planning)."""
        config = self.config
        block = config.block_length or config.max_new_tokens
        return min(length, block + (prompt_len if config.infill else 0)) if self.windowed else length

    def make_cache(self) -> Cache | None:
        return DiffusionKVCache() if self.cached else None

    def groups(self, attention_mask) -> None:
        """Rows that need separate calls (none: LLaDA's blocks are relative to the prompt)."""
        return None

    def plan(self, input_ids, attention_mask, prompt_masks: torch.Tensor, steps_per_token) -> list[Block]:
        config = self.config
        gen_len, prompt_len = config.max_new_tokens, input_ids.shape[1]
        schedule = config.threshold is None and config.factor is None
        if gen_len == 0:
            n_masks = int(prompt_masks.max()) if prompt_masks.numel() else 0
            if n_masks == 0:
                raise ValueError("Nothing to generate: max_new_tokens is 0 and the input has no mask tokens.")
            steps = scaled_steps(steps_per_token, n_masks, 1) if steps_per_token else config.steps or n_masks
            if schedule and steps > n_masks:
                raise ValueError(f"steps ({steps}) > masks to fill ({n_masks}): some steps would commit nothing.")
            return [Block(0, prompt_len, steps)]
        block_length = config.block_length or gen_len
        if gen_len % block_length:
            raise ValueError(f"max_new_tokens ({gen_len}) must be divisible by block_length ({block_length}).")
        num_blocks = gen_len // block_length
        steps = scaled_steps(steps_per_token, gen_len, num_blocks) if steps_per_token else config.steps or gen_len
        if schedule:
            if steps > gen_len:
                raise ValueError(f"steps ({steps}) > max_new_tokens ({gen_len}): some steps would commit nothing.")
            if steps % num_blocks:
                raise ValueError(f"steps ({steps}) must be divisible by the number of blocks ({num_blocks}).")
        first = 0 if config.infill else prompt_len  # prompt masks are candidates in every block
        ends = [prompt_len + (b + 1) * block_length for b in range(num_blocks)]
        return [
            Block(first if b == 0 else end - block_length, end, max(steps // num_blocks, 1))
            for b, end in enumerate(ends)
        ]

    def view(self, block: Block, step: int, length: int, prompt_len: int, k_max: int, last: bool) -> StepView:
        window = (block.start, block.end) if self.windowed else (0, length)
        query = (0, length)
        if self.cached and step > 0:
            query = (block.start, length if self.config.cache == "prefix" else block.end)
        return StepView(query, window, block.end, prompt_len, k_max, not last)

    def forward(self, model, inp, view: StepView, cache) -> torch.Tensor:
        """One forward over the query columns (CFG: doubled batch), logits of the window's columns."""
        (q_start, q_end), (w_start, w_end) = view.query, view.window
        if cache is not None:
            cache.begin(refresh=view.query == (0, inp.x.shape[1]), start=q_start, end=q_end)

        def forward(input_ids, attention_mask):
            return model(
                input_ids=input_ids.narrow(1, q_start, q_end - q_start),
                attention_mask=attention_mask,
                position_ids=torch.arange(q_start, q_end, device=input_ids.device)[None],
                past_key_values=cache,
                logits_to_keep=_columns(w_start - q_start, w_end - q_start, input_ids.device),
            ).logits

        cfg, mask_id = self.config.cfg_scale, self.config.mask_token_id
        return classifier_free_guidance(forward, inp.x, inp.prompt_index, cfg, mask_id, inp.attention_mask)
