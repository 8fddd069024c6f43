"""The diffusion batcher: requests that arrive while a batch denoises wait and start together in the next one.

Why not `transformers serve`'s `GenerateRunner` / continuous batching: both add and retire rows token by token
(autoregressive); a diffusion canvas is denoised whole, so batching happens per `generate()` call: requests with the
same settings (the `Job.key`) are left-padded into one batch of at most `max_batch_size` rows. Left padding is exact
in the package's `generate()` (positions follow the attention mask), so a row's greedy answer does not depend on its
batch.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import torch

from .protocol import Job


class DiffusionBatcher:
    """One worker thread running `model.generate` on batches of queued `Job`s (grouped by settings)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 8, compile: bool = False, start: bool = True) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        self.compile = compile
        config = model.generation_config
        pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else _first(config.eos_token_id)
        model_config = model.config
        self.max_positions = getattr(model_config, "max_position_embeddings", None) or getattr(
            model_config, "max_sequence_length", None
        )
        self.end_ids = {t for t in (*_ids(config.eos_token_id), *_ids(getattr(config, "eot_token_id", None)))}
        if tokenizer.eos_token_id is not None:
            self.end_ids.add(tokenizer.eos_token_id)
        self.batches = 0  # how many generate() calls ran (tests and the bench read it)
        self._queue: list[Job] = []
        self._lock = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="llada-hf-batcher", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the worker (`start=False` then `start()`: jobs queued before it share the first batch)."""
        self._thread.start()

    def submit(self, job: Job) -> Future:
        """Queue a job; its future gets one list of answer ids per row (prompt-major, `n` rows per prompt)."""
        job.future = Future()
        with self._lock:
            if self._stopped:
                raise RuntimeError("the server is shutting down")
            self._queue.append(job)
            self._lock.notify()
        return job.future

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._lock.wait()
                if self._stopped:
                    for job in self._queue:
                        job.future.set_exception(RuntimeError("the server is shutting down"))
                    return
                batch = self._take()
            self._run(batch)

    def _take(self) -> list[Job]:
        """The oldest job and the queued jobs with its settings that fit the rows and the positions."""
        first = self._queue[0]
        chosen, rows = [first], first.rows
        width = max(len(p) for p in first.prompts)
        canvas = first.settings["max_new_tokens"]
        for job in self._queue[1:]:
            if job.key != first.key or rows + job.rows > self.max_batch_size:
                continue
            job_width = max(width, *(len(p) for p in job.prompts))
            if self.max_positions and job_width + canvas > self.max_positions:
                continue
            chosen.append(job)
            rows, width = rows + job.rows, job_width
        for job in chosen:
            self._queue.remove(job)
        return chosen

    def _run(self, jobs: list[Job]) -> None:
        try:
            answers = self._generate(jobs)
        except ValueError as error:  # a request's fault: find whose, alone (the others still get answers)
            if len(jobs) > 1:
                for job in jobs:
                    self._run([job])
            else:
                jobs[0].future.set_exception(error)
            return
        except Exception as error:  # noqa: BLE001 - the server's fault: every request of the batch learns it
            for job in jobs:
                job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            job.future.set_result(answers[start : start + job.rows])
            start += job.rows

    def _generate(self, jobs: list[Job]) -> list[list[int]]:
        """One left-padded `generate()` call for the jobs' rows; the answer ids of each row."""
        rows = [prompt for job in jobs for prompt in job.prompts for _ in range(job.n)]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = self.model.device
        kwargs = dict(jobs[0].settings)
        if self.compile:
            kwargs["compile"] = True
        if jobs[0].seed is not None:
            kwargs["generator"] = torch.Generator(device=device).manual_seed(jobs[0].seed)
        self.batches += 1
        out = self.model.generate(ids.to(device), attention_mask=mask.to(device), **kwargs)
        return out[:, width:].tolist()


def _ids(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _first(value):
    ids = _ids(value)
    return ids[0] if ids else None
