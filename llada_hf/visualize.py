"""A terminal view of denoising: the answer canvas drawn after every step, masks (░) turning into words.

`DenoisingVisualizer` is a streamer: pass it as `generate(..., streamer=...)`. `generate()` hands it the prompt,
then the canvas after each step through `put_draft` (the hook transformers' `TextDiffusionStreamer` defines), then
`end()`. On a terminal each frame overwrites the last; otherwise (logs, pipes, tests) frames are printed one per line.
"""

import sys
from typing import TextIO

import torch
from transformers.generation.streamers import BaseStreamer


class DenoisingVisualizer(BaseStreamer):
    """Draws the canvas as it settles, with a progress counter; `frames` keeps every rendered frame."""

    def __init__(
        self,
        tokenizer,
        total_steps: int | None = None,
        stream: TextIO | None = None,
        mask_glyph: str = "░",
        live: bool | None = None,
        color: bool | None = None,
    ) -> None:
        self.tokenizer, self.total_steps, self.mask_glyph = tokenizer, total_steps, mask_glyph
        self.stream = stream or sys.stdout
        is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.live = is_tty if live is None else live
        self.color = is_tty if color is None else color
        self.mask_id = tokenizer.mask_token_id
        self.frames: list[str] = []
        self._prompt_seen = False

    def render(self, answer_ids: torch.Tensor) -> str:
        """Decode runs of committed tokens; each mask becomes one glyph."""
        ids = answer_ids.flatten().tolist()
        parts, run = [], []
        for token in ids + [None]:
            if token is not None and token != self.mask_id:
                run.append(token)
                continue
            if run:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=True))
                run = []
            if token is not None:
                parts.append(f"\033[2m{self.mask_glyph}\033[0m" if self.color else self.mask_glyph)
        return "".join(parts)

    def put(self, value: torch.Tensor) -> None:
        # generate() first sends the prompt, then final text; the drafts already show everything.
        self._prompt_seen = True

    def put_draft(self, value: torch.Tensor, **kwargs) -> None:
        text = self.render(value)
        self.frames.append(text)
        step = len(self.frames)
        masks = int((value == self.mask_id).sum())
        progress = f"step {step}/{self.total_steps}" if self.total_steps else f"step {step}"
        line = f"[{progress} | {masks} masked] {text}"
        if self.live:
            if step > 1:
                self.stream.write("\0338\033[J")  # back to the saved cursor, clear the old frame
            self.stream.write("\0337" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
