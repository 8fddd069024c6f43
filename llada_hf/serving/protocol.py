"""OpenAI request fields -> diffusion `generate()` settings: every field is honoured or refused (a 400 naming it).

Why a table of its own: `transformers serve` only warns on the OpenAI fields it does not use and maps `max_tokens`
straight to `max_new_tokens`; a diffusion canvas needs whole blocks, a step count that divides them and room in the
model's positions, so the mapping below decides the canvas and says no (ValueError -> 400) instead of warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: OpenAI fields honoured by both endpoints (how: docs/SERVING.md's field table).
COMMON_FIELDS = ("model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "stop", "seed")
CHAT_FIELDS = (*COMMON_FIELDS, "messages", "max_completion_tokens", "logit_bias")
COMPLETION_FIELDS = (*COMMON_FIELDS, "prompt", "logit_bias", "echo", "best_of")

#: OpenAI fields refused with a 400, and why (any field not named anywhere is refused as unknown).
REFUSED_FIELDS = {
    "frequency_penalty": "a count-based penalty over left-to-right history; a diffusion canvas is filled out of order",
    "presence_penalty": "a presence penalty over left-to-right history; a diffusion canvas is filled out of order",
    "logprobs": "per-token log-probabilities are not collected by the diffusion sampler",
    "top_logprobs": "per-token log-probabilities are not collected by the diffusion sampler",
    "tools": "no tool-call parser for the LLaDA chat templates",
    "tool_choice": "no tool-call parser for the LLaDA chat templates",
    "functions": "no tool-call parser for the LLaDA chat templates",
    "function_call": "no tool-call parser for the LLaDA chat templates",
    "parallel_tool_calls": "no tool-call parser for the LLaDA chat templates",
    "response_format": "constrained (JSON) decoding is not implemented for diffusion",
    "audio": "text only",
    "modalities": "text only",
    "prediction": "predicted outputs are an autoregressive speed-up",
    "reasoning_effort": "no reasoning mode",
    "service_tier": "one local service tier",
    "store": "nothing is stored",
    "metadata": "nothing is stored",
    "user": "no per-user accounting",
    "web_search_options": "no web search",
    "suffix": "infilling after the prompt is not exposed by this endpoint",
    "verbosity": "no verbosity control",
    "prompt_cache_key": "no prompt cache",
    "safety_identifier": "no per-user accounting",
}

#: Diffusion settings a request may carry in its extra body; the rest of the generation config is the server's.
SERVER_ONLY = {"mask_token_id", "eot_token_id", "output_history", "infill", "compile", "fast"}


def diffusion_fields(generation_config) -> tuple[str, ...]:
    """The extra-body fields this model's generation config accepts (its diffusion fields, minus server-only ones)."""
    names = getattr(type(generation_config), "_diffusion_defaults", {})
    return tuple(sorted(name for name in names if name not in SERVER_ONLY))


@dataclass
class Job:
    """One request's rows: its prompts' ids, its generate() settings (the batching key) and how to cut answers."""

    prompts: list[list[int]]
    n: int
    settings: dict[str, Any]
    max_tokens: int | None
    stop: list[str]
    seed: int | None = None
    alone: bool = False  # seeded sampling: its own generator, its own batch
    future: Any = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    @property
    def key(self) -> tuple:
        """Requests batch together only with equal settings (and never when seeded sampling needs its own RNG)."""
        return (id(self),) if self.alone else tuple(sorted((k, repr(v)) for k, v in self.settings.items()))


def bad(name: str, why: str) -> ValueError:
    return ValueError(f"{name}: {why}")


def check_fields(body: dict, honoured: tuple[str, ...], extra: tuple[str, ...]) -> None:
    """400 (ValueError naming the field) for every field that is neither honoured nor a diffusion setting."""
    if not isinstance(body, dict):
        raise bad("body", "the request body must be a JSON object")
    for name, value in body.items():
        if name in honoured or name in extra:
            continue
        if name in REFUSED_FIELDS:
            if value is None:
                continue
            raise bad(name, f"not supported by llada-hf serve ({REFUSED_FIELDS[name]})")
        raise bad(name, f"unknown field; OpenAI fields honoured: {', '.join(honoured)}; diffusion: {', '.join(extra)}")


def _int(body: dict, name: str, low: int, default=None, high: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise bad(name, f"must be an integer {span}, got {value!r}")
    return value


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low <= value <= high):
        raise bad(name, f"must be a number in [{low}, {high}], got {value!r}")
    if low_open and value == low:
        raise bad(name, f"must be > {low}")
    return float(value)


def sampling_settings(body: dict, generation_config) -> tuple[dict[str, Any], bool]:
    """(generate kwargs for temperature / top_p / logit_bias, whether the request samples)."""
    settings: dict[str, Any] = {}
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is None:
        temperature = float(getattr(generation_config, "temperature", 0.0) or 0.0)
        temperature = temperature if getattr(generation_config, "do_sample", False) else 0.0
    else:
        settings.update(temperature=temperature, do_sample=temperature > 0)
    top_p = _number(body, "top_p", 0.0, 1.0, low_open=True)
    if top_p is not None and top_p < 1.0:
        if temperature == 0:
            raise bad("top_p", "only filters sampled proposals: set temperature > 0 (greedy decoding ignores it)")
        settings["top_p"] = top_p
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise bad("logit_bias", "must be an object {token id: bias}")
        try:
            settings["sequence_bias"] = {(int(k),): float(v) for k, v in bias.items()}
        except (TypeError, ValueError) as error:
            raise bad("logit_bias", f"keys must be token ids and values numbers ({error})") from error
        if any(not -100 <= v <= 100 for v in settings["sequence_bias"].values()):
            raise bad("logit_bias", "biases must be in [-100, 100]")
    return settings, temperature > 0


def stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise bad("stop", "must be a non-empty string or a list of at most 4 non-empty strings")
    return stops


def plan_canvas(generation_config, max_positions: int | None, prompt_len: int, max_tokens: int | None, extra: dict):
    """`max_new_tokens` and `steps` for a request: whole blocks covering `max_tokens` (or the config's canvas),
    capped by the positions the prompt leaves, with the checkpoint's tokens per step (unless `steps` is given).

    A ValueError (400) names `max_tokens` when not one block fits after the prompt."""
    default_new = generation_config.max_new_tokens or generation_config.block_length or 128
    default_steps = generation_config.steps or default_new
    wanted = max_tokens if max_tokens is not None else default_new
    block = extra.get("block_length") or generation_config.block_length  # None: the canvas is one block
    unit = block or 1
    canvas = math.ceil(wanted / unit) * unit
    if max_positions:
        left = max_positions - prompt_len
        canvas = min(canvas, max(left, 0) // unit * unit)
        if canvas <= 0:
            raise bad(
                "max_tokens",
                f"the prompt ({prompt_len} tokens) leaves {max(left, 0)} of the model's {max_positions} positions, "
                f"less than one block ({unit} tokens): shorten the prompt or lower block_length",
            )
    block = block or canvas
    steps = extra.get("steps")
    if steps is None:
        per_block = max(1, math.ceil(block * default_steps / default_new))
        steps = per_block * (canvas // block)
    return {"max_new_tokens": canvas, "steps": steps, "block_length": block}


def cut_answer(ids: list[int], end_ids: set[int], max_tokens: int | None, stops: list[str], decode) -> tuple:
    """(text, completion tokens, finish_reason): the row cut at its first EOS/EoT ("stop"), else at max_tokens or the
    canvas end ("length"), then at the first stop string ("stop"); tokens count the answer, never the EOS padding."""
    limit = len(ids) if max_tokens is None else min(len(ids), max_tokens)
    end = next((i for i, token in enumerate(ids[:limit]) if token in end_ids), None)
    real = ids[:limit] if end is None else ids[:end]
    reason = "length" if end is None else "stop"
    text = decode(real)
    hits = [(text.find(s), s) for s in stops if s in text]
    if hits:
        position, stop = min(hits)
        text, reason = text[:position], "stop"
        count = next(k for k in range(len(real) + 1) if stop in decode(real[:k]))
        return text, count, reason
    return text, len(real), reason
