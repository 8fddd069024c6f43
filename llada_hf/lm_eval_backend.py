"""lm-evaluation-harness backend for LLaDA: `--model llada_hf`, a subclass of lm-eval's `HFLM`.

Importing this module registers "llada_hf" with lm-eval. lm-eval 0.4.13's registry reads no entry points, so plain
`lm_eval --model llada_hf` cannot find it: `llada-hf eval <lm_eval arguments>` (this module's `main`) registers it,
makes it the default model, checks the arguments and runs lm-eval's CLI. From Python: import this module, then
`lm_eval.simple_evaluate(model="llada_hf", ...)`.

`HFLM` does the loading, tokenisation, chat templates, request sorting and batching, and data parallelism. Only what
diffusion changes is overridden:
- `loglikelihood`: the Monte-Carlo ELBO (`llada_hf.likelihood.batch_log_likelihood`); `mc_num` / `mc_batch_size` set
  the estimator, `--batch_size` the rows per forward. `is_greedy` is only computed with `is_check_greedy=True`.
- `_encode_pair`: a chat-templated context is tokenised as `generate()`/`pipeline` see the prompt, the continuation
  on its own (HFLM tokenises them together, which moves the header's "\\n\\n" into the answer).
- `loglikelihood_rolling`: HFLM's, with windows one token shorter (the ELBO reads context + the whole window).
- `generate_until`: `model.generate()` (the diffusion sampler), `until` passed as `stop_strings`.
Per-task settings (`preset=...`) are data, `hub_configs/lm_eval_presets.json` (`PRESETS`); see docs/EVAL.md.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lm_eval.models  # noqa: F401  (registers the built-in models first; get_model() skips that if ours is alone)
import torch
import transformers
from lm_eval.api.model import CacheHook
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import simple_parse_args_string
from tqdm import tqdm

from .errors import UsageError
from .likelihood import METHODS, batch_log_likelihood

logger = logging.getLogger(__name__)

MODEL_NAME = "llada_hf"

# The likelihood estimator's official defaults (ML-GSAI eval_llada.py: mc_num 128 in groups of 32).
DEFAULTS: dict[str, Any] = {"mc_num": 128, "mc_batch_size": 32, "cfg": 0.0}

# Generation settings, by generate()'s names; the official eval_llada.py names are accepted as aliases.
GEN_KEYS = ("max_new_tokens", "steps", "block_length", "remasking", "cfg_scale", "temperature", "suppress_eos_logits",
            "suppress_eos_confidence")  # fmt: skip
ALIASES = {"gen_length": "max_new_tokens", "cfg": "cfg_scale", "logits_eos_inf": "suppress_eos_logits",
           "confidence_eos_eot_inf": "suppress_eos_confidence"}  # fmt: skip
# The task's answer length (lm-eval's names): ranks below explicit settings, above the checkpoint and presets.
TASK_LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
RENAMED = {"rows_per_forward": "batch_size", "gen_batch_size": "batch_size", "model_path": "pretrained"}

PRESETS_FILE = "lm_eval_presets.json"  # in the package's hub_configs
# Numeric settings by the name the user writes: (must be an integer, minimum).
NUMERIC: dict[str, tuple[bool, float]] = {
    "mc_num": (True, 1), "mc_batch_size": (True, 1), "seed": (True, 0), "max_new_tokens": (True, 1),
    "gen_length": (True, 1), "steps": (True, 1), "block_length": (True, 1), "batch_size": (True, 1),
    "max_batch_size": (True, 1), "cfg": (False, 0.0), "cfg_scale": (False, 0.0), "temperature": (False, 0.0),
}  # fmt: skip
SOURCES = ("HFLM's default", "the preset", "the checkpoint's generation_config.json", "the task's max_gen_toks",
           "--model_args", "--gen_kwargs")  # fmt: skip


def check_settings(values: dict[str, Any], error: type[ValueError] = UsageError) -> dict[str, Any]:
    """`values` with each numeric setting (`NUMERIC`) as a number, or `error` naming the first that is not a finite
    number >= its minimum (an integer where needed). None is unset; `batch_size` may be HFLM's "auto" / "auto:N"."""
    out = dict(values)
    for name, value in values.items():
        if name not in NUMERIC or value is None or (name == "batch_size" and str(value).startswith("auto")):
            continue
        integer, minimum = NUMERIC[name]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        wrong_type = isinstance(value, bool) or (integer and not number.is_integer())
        if wrong_type or not math.isfinite(number) or number < minimum:
            kind = "an integer" if integer else "a finite number"
            extra = " or auto" if name == "batch_size" else ""
            raise error(f"llada_hf: {name}={value!r} is not valid; it must be {kind} >= {minimum:g}{extra}.")
        out[name] = int(number) if integer else number
    return out


def load_presets() -> dict[str, dict[str, dict[str, Any]]]:
    """The per-task settings tables (`preset=NAME`) from `hub_configs/lm_eval_presets.json`, without its notes
    (keys starting with "_"). Keys are lm-eval task names; a task uses the longest key equal to its name or prefixing
    it followed by "_". Sources and verification status: docs/EVAL.md."""
    tables = json.loads(resources.files("llada_hf.hub_configs").joinpath(PRESETS_FILE).read_text(encoding="utf-8"))
    return {
        name: {task: values for task, values in table.items() if not task.startswith("_")}
        for name, table in tables.items()
        if not name.startswith("_")
    }


PRESETS: dict[str, dict[str, dict[str, Any]]] = load_presets()


def preset_for_task(preset: str | None, task_name: str | None) -> dict[str, Any]:
    """The preset entry for `task_name`: the longest key equal to it or prefixing it followed by '_' ({} if none)."""
    if preset is None or task_name is None:
        return {}
    table = PRESETS[preset]
    keys = [key for key in table if task_name == key or task_name.startswith(key + "_")]
    return dict(table[max(keys, key=len)]) if keys else {}


def _gen_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Generation keys of `values` under generate()'s names (official aliases mapped, `cfg` shared with scoring)."""
    out = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name == "suppress_eos_confidence" and isinstance(value, bool):
            value = "official" if value else None  # the official flag is the bug-for-bug rule
        if name in GEN_KEYS and value is not None:
            out[name] = value
    return out


def _check_schedule(settings: dict[str, Any], levels: dict[str, int], layers: list[dict[str, Any]]) -> dict[str, Any]:
    """`settings`, or a ValueError with the fix when steps (or a block length not dividing the length) come from a
    lower rank (`SOURCES`) than the length, set there for another length. Never rescaled: nobody asked for that."""
    length = settings["max_new_tokens"]
    stale = [
        key for key in ("steps", "block_length")
        if key in settings and levels[key] < levels["max_new_tokens"]
        and layers[levels[key]].get("max_new_tokens", length) != length
        and (key == "steps" or length % settings[key])  # a block length that divides the new length still fits
    ]  # fmt: skip
    if stale:
        level = levels[stale[0]]
        given = " and ".join(f"{key}={settings[key]}" for key in stale)
        raise ValueError(
            f"llada_hf: {given} from {SOURCES[level]} (meant for max_new_tokens={layers[level]['max_new_tokens']}) "
            f"do not fit max_new_tokens={length} from {SOURCES[levels['max_new_tokens']]}. Set the schedule for "
            f"{length} tokens (e.g. --gen_kwargs steps={length},block_length={length}) or the length in --model_args "
            f"(gen_length={layers[level]['max_new_tokens']})."
        )
    return settings


class LLaDAEvalHarness(HFLM):
    """lm-eval's `HFLM` for LLaDA checkpoints: ELBO scoring and diffusion generation; everything else is HFLM's.

    Model arguments besides HFLM's (table in docs/EVAL.md): preset; mc_num, mc_batch_size, cfg (= cfg_scale),
    method ("mc" official, "stratified", "exact"), seed, is_check_greedy (the estimator); max_new_tokens
    (= gen_length), steps, block_length, remasking, temperature, suppress_eos_logits, suppress_eos_confidence
    (generate()); mask_id; quantize (int8 / int4 torchao, nf4 bitsandbytes). `--batch_size` is rows per forward and
    prompts per `generate()` call, capped by `max_batch_size`. All are checked before HFLM loads anything."""

    AUTO_MODEL_CLASS = transformers.AutoModel  # LLaDA's AutoModel is the model with its LM head
    _DEFAULT_MAX_LENGTH = 4096

    def __init__(
        self,
        pretrained: Any = None,
        preset: str | None = None,
        method: str = "mc",
        seed: int = 0,
        is_check_greedy: bool = False,
        mask_id: int | None = None,
        dtype: str | torch.dtype | None = "bfloat16",
        device: str | None = None,
        max_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        for old, new in RENAMED.items():
            if old in kwargs:
                raise UsageError(f"llada_hf: `{old}` is now `{new}` (see docs/EVAL.md).")
        ours = {key: kwargs.pop(key) for key in list(kwargs) if key in DEFAULTS or key in ALIASES or key in GEN_KEYS}
        ours = check_settings(ours)
        seed, max_batch_size, _ = check_settings(
            {"seed": seed, "max_batch_size": max_batch_size, "batch_size": kwargs.get("batch_size")}
        ).values()
        if preset is not None and preset not in PRESETS:
            raise UsageError(f"llada_hf: unknown preset={preset!r}; valid: {sorted(PRESETS)}.")
        if method not in METHODS:
            raise UsageError(f"llada_hf: unknown method={method!r}; valid: {METHODS}.")
        if "cfg" in ours and "cfg_scale" in ours and ours["cfg"] != ours["cfg_scale"]:
            raise UsageError("llada_hf: pass either cfg or cfg_scale, not both.")
        if "cfg_scale" in ours:
            ours["cfg"] = ours["cfg_scale"]
        self.preset, self.method, self.seed = preset, method, seed
        self.explicit = {key: ours[key] for key in ("mc_num", "mc_batch_size", "cfg") if key in ours}
        self.explicit_gen = _gen_settings(ours)
        for task in [None, *PRESETS.get(preset, {})]:  # the estimator settings of every task the preset names
            self.likelihood_settings(task, error=UsageError)
        if device is None:  # HFLM's rule for a device it does not know (its default is the literal "cuda")
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("backend", "causal")
        self._quantize = kwargs.pop("quantize", None) or None
        self._chat_prompts: set[str] = set()
        self._rolling = 0
        super().__init__(pretrained, dtype=dtype, device=device, max_batch_size=max_batch_size or 64, **kwargs)
        self.max_batch_cap = max_batch_size
        self.is_check_greedy = str(is_check_greedy).lower() in ("1", "true", "yes")
        self.mask_id = int(mask_id) if mask_id is not None else getattr(self.config, "mask_token_id", None)
        if self.mask_id is None:
            raise ValueError("The model config has no mask_token_id; pass mask_id=... in --model_args.")
        generation_config = getattr(self.model, "generation_config", None)
        # A generation_config.json written by hand (not derived from config.json) ranks above the presets.
        self.checkpoint_gen = {}
        if generation_config is not None and not getattr(generation_config, "_from_model_config", False):
            defaults = type(generation_config)()
            self.checkpoint_gen = {
                key: getattr(generation_config, key) for key in GEN_KEYS
                if getattr(generation_config, key, None) != getattr(defaults, key, None)
            }  # fmt: skip
        self._auto_rows = self._task = None
        self._warned = False

    def _create_model(self, *args: Any, quantization_config: Any = None, **kwargs: Any) -> None:
        """HFLM's loading, with `quantize=` turned into from_pretrained's `quantization_config` (HFLM reads one only
        from a checkpoint's config)."""
        if self._quantize is not None:
            from .quantize import quantization_config as config_for

            quantization_config = config_for(self._quantize)
        super()._create_model(*args, quantization_config=quantization_config, **kwargs)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LLaDAEvalHarness:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> LLaDAEvalHarness:
        """`--model_args` win over lm-eval's own options (the base class fails when both set device/batch_size)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # -------------------------------------------------- Settings

    @property
    def batch_size(self):
        """Rows per forward / prompts per generate() call: `--batch_size`, capped by an explicit `max_batch_size`."""
        size = self.batch_size_per_gpu
        if self.max_batch_cap is not None and size != "auto" and int(size) > self.max_batch_cap:
            logger.warning("llada_hf: batch_size %s capped to max_batch_size %d.", size, self.max_batch_cap)
            return self.max_batch_cap
        return size

    def _rows_per_forward(self) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        if self._auto_rows is None:
            self._auto_rows = int(self._detect_batch_size())  # HFLM's search, from max_batch_size down
        return self._auto_rows

    def likelihood_settings(self, task_name: str | None, error: type[ValueError] = ValueError) -> dict[str, Any]:
        """Estimator settings: official defaults < the task's preset entry < --model_args. An unset mc_batch_size
        is gcd(mc_num, 32) (32 for the official mc_num 128)."""
        preset = {k: v for k, v in preset_for_task(self.preset, task_name).items() if k in DEFAULTS}
        settings = check_settings({**DEFAULTS, **preset, **self.explicit}, error)
        settings = {key: settings[key] for key in ("mc_num", "mc_batch_size", "cfg")}
        if "mc_batch_size" not in self.explicit and "mc_batch_size" not in preset:
            settings["mc_batch_size"] = math.gcd(settings["mc_num"], DEFAULTS["mc_batch_size"])
        if self.method == "mc" and settings["mc_num"] % settings["mc_batch_size"]:
            raise error("llada_hf: mc_num={mc_num} not divisible by mc_batch_size={mc_batch_size}".format(**settings))
        return settings

    def generation_settings(self, task_name: str | None, gen_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """generate() settings, lowest first (`SOURCES`): HFLM's max_gen_toks (256), the preset entry, the checkpoint's
        generation_config.json, the task's max_gen_toks (length only), --model_args, the request's gen_kwargs. A task's
        temperature counts with do_sample only; a schedule meant for another length is refused (`_check_schedule`)."""
        gen_kwargs = dict(gen_kwargs or {})
        preset = preset_for_task(self.preset, task_name)
        task_length = next((gen_kwargs[k] for k in TASK_LENGTH_KEYS if gen_kwargs.get(k) is not None), None)
        request = _gen_settings({k: v for k, v in gen_kwargs.items() if k not in TASK_LENGTH_KEYS})
        request.pop("temperature", None)
        if gen_kwargs.get("do_sample") and gen_kwargs.get("temperature") and "temperature" not in self.explicit_gen:
            request["temperature"] = float(gen_kwargs["temperature"])
        layers = [
            {"max_new_tokens": self.max_gen_toks, "remasking": "low_confidence", "temperature": 0.0},
            _gen_settings(preset),
            self.checkpoint_gen,
            {} if task_length is None else {"max_new_tokens": int(task_length)},
            {**_gen_settings(self.explicit), **self.explicit_gen},
            request,
        ]
        settings, levels = {}, {}
        for level, layer in enumerate(layers):
            for key, value in check_settings(layer, ValueError).items():
                settings[key], levels[key] = value, level
        return _check_schedule(settings, levels, layers)

    # -------------------------------------------------- Likelihood

    @property
    def max_length(self) -> int:
        """HFLM's max_length, one token less while HFLM cuts rolling windows: an autoregressive model reads a window
        without its last token, the ELBO reads context + the whole window."""
        return super().max_length - self._rolling

    def _by_settings(self, requests, score: Callable[[list], list]) -> list:
        """`score` on each group of requests with equal estimator settings (the group's task in `self._task`), in
        request order, so the random draws are those of the official loop; results in request order."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[tuple(self.likelihood_settings(request.task_name).values())].append(index)
        results: dict[int, Any] = {}
        for indices in groups.values():
            self._task = requests[indices[0]].task_name
            try:
                results.update(zip(indices, score([requests[i] for i in indices])))
            finally:
                self._task = None
        return [results[i] for i in range(len(requests))]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """ELBO of each continuation (HFLM's tokenisation and `_loglikelihood_tokens` below), per settings group."""
        self._warn_delimiter(requests)
        return self._by_settings(requests, partial(HFLM.loglikelihood, self, disable_tqdm=disable_tqdm))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """HFLM's rolling windows and sums, per settings group; each window is scored given the tokens before it that
        still fit (one for a full window, the prefix token for the first). A lower bound on the log-likelihood."""
        self._rolling = 1
        try:
            return self._by_settings(requests, partial(HFLM.loglikelihood_rolling, self, disable_tqdm=disable_tqdm))
        finally:
            self._rolling = 0

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        """HFLM's rendering; the prompt is remembered so that `_encode_pair` tokenises it as generate() sees it."""
        prompt = super().apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)
        self._chat_prompts.add(prompt)
        return prompt

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """After a chat template: the prompt tokenised as `generate()`/`pipeline` see it (no special tokens added),
        the continuation on its own, as `llada_hf.likelihood` scores and the SFT loss trains an answer. HFLM moves the
        header's trailing "\\n\\n" into the continuation and tokenises both together; the byte-level pre-tokeniser
        then splits "\\n\\n" + digits differently, a prompt the model never saw. Other contexts: HFLM's split."""
        if context not in self._chat_prompts:
            return super()._encode_pair(context, continuation)
        encode = partial(self.tok_encode, add_special_tokens=False)
        return encode(context), encode(continuation)

    def _warn_delimiter(self, requests) -> None:
        """A continuation that starts with whitespace after a chat prompt (a task's target_delimiter kept, e.g. with a
        gen_prefix, or by another lm-eval version) is one the model never saw after the assistant header."""
        if not self._warned and any(r.args[0] in self._chat_prompts and r.args[1][:1].isspace() for r in requests):
            self._warned = True
            logger.warning(
                "llada_hf: with --apply_chat_template, continuations start with whitespace (target_delimiter), unseen"
                ' after the assistant header: scores can drop to chance. Set `target_delimiter: ""` in the task.'
            )

    def _fit_pair(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        positions = self.max_length + self._rolling  # a rolling window's context + the whole window fit
        if not continuation:
            raise ValueError("A continuation encodes to no tokens: there is nothing to score.")
        if len(continuation) >= positions:
            raise ValueError(f"Continuation of {len(continuation)} tokens does not fit max_length={positions}.")
        overflow = len(context) + len(continuation) - positions
        if overflow > 0:
            logger.warning("llada_hf: context cut by %d tokens from the left to fit max_length.", overflow)
            context = context[overflow:]
        return list(context), list(continuation)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """(ELBO, is_greedy) for ((context, continuation), context ids, continuation ids) requests."""
        settings = self.likelihood_settings(self._task)
        pairs = [self._fit_pair(ctx, cont) for _, ctx, cont in requests]
        rows = self._rows_per_forward()
        chunk = max(16, rows // settings["mc_num"])  # pairs per progress update (draws stay in request order)
        values: list[float] = []
        with tqdm(total=len(pairs), desc="llada_hf loglikelihood", disable=disable_tqdm or self.rank != 0) as bar:
            for start in range(0, len(pairs), chunk):
                values += batch_log_likelihood(
                    self.model, pairs[start : start + chunk], mc_num=settings["mc_num"],
                    batch_size=settings["mc_batch_size"], cfg_scale=settings["cfg"], mask_token_id=self.mask_id,
                    method=self.method, seed=self.seed, rows_per_forward=rows,
                )  # fmt: skip
                bar.update(len(pairs[start : start + chunk]))
        results = []
        for request, (ctx, cont), value in zip(requests, pairs, values):
            greedy = self._is_greedy(ctx, cont, settings["cfg"]) if self.is_check_greedy else False
            results.append((value, greedy))
            if request[0] is not None:
                self.cache_hook.add_partial("loglikelihood", request[0], (value, greedy))
        return results

    @torch.no_grad()
    def _is_greedy(self, context: list[int], continuation: list[int], cfg: float) -> bool:
        """Whether greedy decoding of len(continuation) tokens, one per step (most confident first), reproduces it."""
        length = len(continuation)
        output = self.model.generate(
            torch.tensor([context], device=self.device), max_new_tokens=length, steps=length, block_length=length,
            temperature=0.0, cfg_scale=cfg, remasking="low_confidence", mask_token_id=self.mask_id,
        )  # fmt: skip
        return output[0, len(context) :].tolist() == continuation

    # -------------------------------------------------- Generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """HFLM's loop (sorting, batching by --batch_size, decoding, cutting at stop sequences) on requests whose
        gen_kwargs carry the resolved diffusion settings."""
        resolved = []
        for request in requests:
            context, gen_kwargs = request.args
            settings = self.generation_settings(request.task_name, gen_kwargs)
            rest = {k: v for k, v in gen_kwargs.items() if k not in (*TASK_LENGTH_KEYS, "do_sample")}
            rest = {k: v for k, v in rest.items() if ALIASES.get(k, k) not in GEN_KEYS}
            length = settings.pop("max_new_tokens")  # HFLM's do_sample agrees with the temperature, so keeps it
            resolved.append(SimpleNamespace(args=(context, {**rest, **settings, "max_gen_toks": length,
                                                            "do_sample": settings["temperature"] > 0})))  # fmt: skip
        hook, self.cache_hook = self.cache_hook, CacheHook(None)  # results are cached under the original requests
        try:
            outputs = super().generate_until(resolved, disable_tqdm=disable_tqdm)
        finally:
            self.cache_hook = hook
        for request, output in zip(requests, outputs):
            hook.add_partial("generate_until", request.args, output)
        return outputs

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        """model.generate() on the left-padded batch, every sampler setting as resolved, plus do_sample = temperature
        > 0 (generate()'s rule; a sampling checkpoint config cannot overrule temperature 0, which is then left out)."""
        generation_kwargs["do_sample"] = generation_kwargs.get("temperature", 0.0) > 0
        if not generation_kwargs["do_sample"]:
            generation_kwargs.pop("temperature", None)
        attention_mask = generation_kwargs.pop("attention_mask", None)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        stops = [s for s in stop or [] if s]
        return self.model.generate(
            context, attention_mask=attention_mask, max_new_tokens=max_length - context.shape[1],
            mask_token_id=self.mask_id, stop_strings=stops or None, tokenizer=self.tokenizer if stops else None,
            **generation_kwargs,
        )  # fmt: skip


def register() -> None:
    """Register `LLaDAEvalHarness` as "llada_hf" with lm-eval (idempotent: `python -m` runs this file twice over)."""
    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(LLaDAEvalHarness)


register()


def check_cli_args(args: Any) -> None:
    """Checks of lm-eval's parsed `run` arguments before it does any work: settings, a missing local `pretrained`
    path (a name that could be a hub id, "org/name", is left to the hub), a CUDA device without CUDA."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    model_args = getattr(args, "model_args", None) or {}
    model_args = model_args if isinstance(model_args, dict) else simple_parse_args_string(model_args)
    check_settings(model_args)
    check_settings({key: getattr(args, key, None) for key in ("batch_size", "max_batch_size")})
    pretrained = model_args.get("pretrained")
    if isinstance(pretrained, str) and not Path(pretrained).expanduser().exists():
        try:
            validate_repo_id(pretrained)
        except HFValidationError:
            raise UsageError(f"llada_hf: pretrained={pretrained!r}: no such local model folder.") from None
    for flag, device in (("--device", getattr(args, "device", None)), ("device", model_args.get("device"))):
        if str(device or "").startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"llada_hf: {flag} {device}: no CUDA device is available here (use --device cpu).")


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI (`lm_eval.__main__.cli_evaluate`, step by step) with "llada_hf" registered and as the default
    `--model`, and `check_cli_args` run before lm-eval does any work. `llada-hf eval` calls this."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    start = 1 if argv[:1] == ["run"] else 0
    named = any(arg in ("--model", "-M") or arg.startswith("--model=") for arg in argv)
    if argv[start:] and argv[start] not in ("ls", "validate", "-h", "--help") and not named:
        argv.insert(start, f"--model={MODEL_NAME}")
    sys.argv = [sys.argv[0], *argv]
    setup_logging()
    parser = HarnessCLI()
    args = parser.parse_args()
    if getattr(args, "command", None) == "run" and args.model == MODEL_NAME:
        check_cli_args(args)
    parser.execute(args)


if __name__ == "__main__":
    main()


__all__ = ["DEFAULTS", "MODEL_NAME", "PRESETS", "LLaDAEvalHarness", "check_cli_args", "check_settings",
           "load_presets", "main", "preset_for_task", "register"]  # fmt: skip
