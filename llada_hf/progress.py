"""Progress bars for long generation and scoring: tqdm on stderr, quiet when stdout or stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any

from transformers.generation.streamers import BaseStreamer


def interactive() -> bool:
    """Whether progress bars are wanted: both stdout and stderr are terminals (not piped, not captured)."""
    return all(hasattr(stream, "isatty") and stream.isatty() for stream in (sys.stdout, sys.stderr))


def progress_bar(total: int | None, desc: str, enabled: bool | None = None, **kwargs: Any):
    """A tqdm bar on stderr; `enabled=None` shows it only on a terminal (`interactive()`)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not (interactive() if enabled is None else enabled), **kwargs)


class StepProgress(BaseStreamer):
    """A `generate(streamer=...)` that advances a bar by one per denoising step (`put_draft`, called every step)."""

    def __init__(self, total_steps: int | None, desc: str = "denoising", enabled: bool | None = None) -> None:
        self.total_steps, self.desc, self.enabled = total_steps, desc, enabled
        self.bar = None
        self.steps = 0

    def put(self, value) -> None:  # the prompt, then final text: the bar counts steps only
        if self.bar is None:
            self.bar = progress_bar(self.total_steps, self.desc, self.enabled, leave=False, unit="step")

    def put_draft(self, value, **kwargs) -> None:
        self.put(value)
        self.steps += 1
        self.bar.update(1)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["StepProgress", "interactive", "progress_bar"]
