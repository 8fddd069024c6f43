"""lm-evaluation-harness backend for LLaDA: `--model llada_hf`, a subclass of lm-eval's `HFLM`.

Importing this module registers "llada_hf" with `lm_eval`. The `lm_eval` CLI only knows its built-in models (no plugin
discovery), so run it through this module, which registers itself and then calls lm-eval's CLI:

    python -m llada_hf.lm_eval_backend --model llada_hf --model_args pretrained=GSAI-ML/LLaDA-8B-Base,preset=base \\
        --tasks arc_challenge --batch_size 32

or from Python: `import llada_hf.lm_eval_backend` and then `lm_eval.simple_evaluate(model="llada_hf", ...)`.

`HFLM` does the loading (device, dtype, device_map / parallelize, peft, revision, quantisation), tokenisation, chat
templates, request sorting and batching, and data parallelism. Only what diffusion changes is overridden:

- `loglikelihood`: the Monte-Carlo ELBO (`llada_hf.likelihood.batch_log_likelihood`); `mc_num` / `mc_batch_size` set
  the estimator, `--batch_size` the rows per forward. `is_greedy` is only computed with `is_check_greedy=True`.
- `loglikelihood_rolling`: the ELBO summed over lm-eval's disjoint rolling windows (a lower bound).
- `generate_until`: `model.generate()` (the diffusion sampler), `until` passed as `stop_strings` (a row stops spending
  forwards once its final prefix holds a stop sequence), the text cut at the first stop sequence.

Per-task settings (`preset=base|instruct|instruct_semi_ar|llada1.5`) follow the official evaluation; they are data,
`hub_configs/lm_eval_presets.json` (loaded into `PRESETS`); see `docs/EVAL.md`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import defaultdict
from importlib import resources
from typing import Any, NamedTuple

import lm_eval.models  # noqa: F401  (registers the built-in models first; get_model() skips that if ours is alone)
import torch
import transformers
from lm_eval.api.model import CacheHook
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

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


def _fit_schedule(settings: dict[str, Any], levels: dict[str, int], ref_lengths: dict[int, int]) -> dict[str, Any]:
    """Steps and block length set below the level that chose the answer length were meant for another length:
    keep the tokens per step, and drop a block length that does not divide the new length (one block)."""
    length = int(settings["max_new_tokens"])
    block = settings.get("block_length")
    if block and levels["block_length"] < levels["max_new_tokens"] and (block > length or length % block):
        settings["block_length"] = block = None
    steps = settings.get("steps")
    if steps and levels["steps"] < levels["max_new_tokens"]:
        ref = ref_lengths.get(levels["steps"])
        steps = max(1, round(steps * length / ref)) if ref else min(steps, length)
        blocks = length // (block or length)
        settings["steps"] = max(blocks, steps // blocks * blocks)
    return settings


class _Request(NamedTuple):
    """What HFLM.generate_until reads from a request: its args (context, generation kwargs)."""

    args: tuple[str, dict[str, Any]]


class LLaDAEvalHarness(HFLM):
    """lm-eval's `HFLM` for LLaDA checkpoints: ELBO scoring and diffusion generation; everything else is HFLM's.

    Model arguments besides HFLM's (`--model_args k=v,...`):
        preset: per-task settings table (`PRESETS`): base, instruct, instruct_semi_ar, llada1.5.
        mc_num, mc_batch_size, cfg (= cfg_scale): the likelihood estimator (official meaning: mc_num samples in
            groups of mc_batch_size with stratified mask counts); method: "mc" (official), "stratified" or "exact";
            seed: the stratified design's seed. is_check_greedy: compute `is_greedy` (one generate per request).
        max_new_tokens (= gen_length), steps, block_length, remasking, temperature, suppress_eos_logits
            (= logits_eos_inf), suppress_eos_confidence (= confidence_eos_eot_inf): generation (`generate()`).
        mask_id: mask token id (default: the model config's).
        quantize: int8 / int4 (torchao) or nf4 (bitsandbytes, CUDA) weights, as `llada_hf.quantize` (`--quantize`).
    `--batch_size` is rows per forward (scoring) and prompts per `generate()` call, capped by `max_batch_size`.
    """

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
                raise ValueError(f"llada_hf: `{old}` is now `{new}` (see docs/EVAL.md).")
        ours = {key: kwargs.pop(key) for key in list(kwargs) if key in DEFAULTS or key in ALIASES or key in GEN_KEYS}
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; valid: {sorted(PRESETS)}.")
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; valid: {METHODS}.")
        if "cfg" in ours and "cfg_scale" in ours and float(ours["cfg"]) != float(ours["cfg_scale"]):
            raise ValueError("Pass either cfg or cfg_scale, not both.")
        if "cfg_scale" in ours:
            ours["cfg"] = ours["cfg_scale"]
        if device is None:  # HFLM's rule for a device it does not know (its default is the literal "cuda")
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("backend", "causal")
        self._quantize = kwargs.pop("quantize", None) or None
        super().__init__(pretrained, dtype=dtype, device=device, max_batch_size=max_batch_size or 64, **kwargs)
        self.max_batch_cap = None if max_batch_size is None else int(max_batch_size)
        self.preset, self.method, self.seed = preset, method, int(seed)
        self.is_check_greedy = str(is_check_greedy).lower() in ("1", "true", "yes")
        self.explicit = {key: ours[key] for key in ("mc_num", "mc_batch_size", "cfg") if key in ours}
        self.explicit_gen = _gen_settings(ours)
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
        self._auto_rows = None
        self._chat_templated = self._warned = False
        self._task = None
        self.likelihood_settings(None)  # fail now when the explicit settings cannot work

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

    # ----------------------------------------------------------------------------------------------------------------
    # Settings

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

    def likelihood_settings(self, task_name: str | None) -> dict[str, Any]:
        """Estimator settings: official defaults < the task's preset entry < --model_args. An unset mc_batch_size
        is gcd(mc_num, 32) (32 for the official mc_num 128)."""
        preset = {k: v for k, v in preset_for_task(self.preset, task_name).items() if k in DEFAULTS}
        settings = {**DEFAULTS, **preset, **self.explicit}
        settings = {"mc_num": int(settings["mc_num"]), "mc_batch_size": int(settings["mc_batch_size"]),
                    "cfg": float(settings["cfg"])}  # fmt: skip
        if "mc_batch_size" not in self.explicit and "mc_batch_size" not in preset:
            settings["mc_batch_size"] = math.gcd(settings["mc_num"], DEFAULTS["mc_batch_size"])
        if self.method == "mc" and settings["mc_num"] % settings["mc_batch_size"]:
            raise ValueError(
                f"mc_num ({settings['mc_num']}) must be divisible by mc_batch_size ({settings['mc_batch_size']})."
            )
        return settings

    def generation_settings(self, task_name: str | None, gen_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """generate() settings, lowest first: the preset entry, the checkpoint's generation_config.json, the task's
        max_gen_toks (length only), --model_args, diffusion keys in the request's gen_kwargs (`--gen_kwargs`).
        Without any length: HFLM's max_gen_toks (256). A task's temperature counts with do_sample only."""
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
            for key, value in layer.items():
                settings[key], levels[key] = value, level
        levels.setdefault("steps", -1)
        levels.setdefault("block_length", -1)
        ref_lengths = {
            level: layer["max_new_tokens"] for level, layer in enumerate(layers) if "max_new_tokens" in layer
        }
        return _fit_schedule(settings, levels, ref_lengths)

    # ----------------------------------------------------------------------------------------------------------------
    # Likelihood

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """ELBO of each continuation; requests with equal estimator settings are scored together, in request order
        (so the random draws are those of the official loop)."""
        self._warn_delimiter(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[tuple(self.likelihood_settings(request.task_name).values())].append(index)
        results: list[Any] = [None] * len(requests)
        for indices in groups.values():
            self._task = requests[indices[0]].task_name
            try:
                values = super().loglikelihood([requests[i] for i in indices], disable_tqdm=disable_tqdm)
            finally:
                self._task = None
            for i, value in zip(indices, values):
                results[i] = value
        return results

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        self._chat_templated = True
        return super().apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def _warn_delimiter(self, requests) -> None:
        """lm-eval's default target_delimiter puts a space before each choice; after a chat template's assistant
        header the model never saw one, and the ELBO then scores the space more than the answer."""
        if self._chat_templated and not self._warned and any(r.args[1][:1] == " " for r in requests):
            self._warned = True
            logger.warning(
                "llada_hf: with --apply_chat_template, continuations start with a space (lm-eval's default "
                "target_delimiter ' '), which a chat model never saw after the assistant header: multiple-choice "
                'scores can drop to chance. Set `target_delimiter: ""` in the task (see docs/EVAL.md).'
            )

    def _fit_pair(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        if not continuation:
            raise ValueError("A continuation encodes to no tokens: there is nothing to score.")
        if len(continuation) >= self.max_length:
            raise ValueError(f"Continuation of {len(continuation)} tokens does not fit max_length={self.max_length}.")
        overflow = len(context) + len(continuation) - self.max_length
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

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """ELBO of whole documents, summed over disjoint rolling windows of max_length tokens (each window scored
        given the tokens before it that still fit: one for a full window, the prefix token for the first)."""
        totals = []
        for request in tqdm(requests, desc="llada_hf loglikelihood_rolling", disable=disable_tqdm or self.rank != 0):
            tokens = self.tok_encode(request.args[0], add_special_tokens=False)
            windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length - 1, 1)
            self._task = request.task_name
            try:
                scored = self._loglikelihood_tokens([(None, *make_disjoint_window(w)) for w in windows], True)
            finally:
                self._task = None
            totals.append(sum(value for value, _ in scored))
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, totals[-1])
        return totals

    # ----------------------------------------------------------------------------------------------------------------
    # Generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """HFLM's loop (sorting, batching by --batch_size, decoding, cutting at stop sequences) on requests whose
        gen_kwargs carry the resolved diffusion settings."""
        resolved = []
        for request in requests:
            context, gen_kwargs = request.args
            settings = self.generation_settings(request.task_name, gen_kwargs)
            rest = {
                k: v for k, v in gen_kwargs.items() if k not in TASK_LENGTH_KEYS and ALIASES.get(k, k) not in GEN_KEYS
            }
            rest.pop("do_sample", None)
            length = settings.pop("max_new_tokens")
            resolved.append(_Request((context, {**rest, **settings, "max_gen_toks": length,
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
        """model.generate() on the left-padded batch; stop sequences end a row's forwards early."""
        generation_kwargs.pop("do_sample", None)
        if not generation_kwargs.get("temperature"):
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


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with "llada_hf" registered: `python -m llada_hf.lm_eval_backend <lm_eval arguments>`."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()


__all__ = [
    "DEFAULTS",
    "MODEL_NAME",
    "PRESETS",
    "LLaDAEvalHarness",
    "load_presets",
    "main",
    "preset_for_task",
    "register",
]
