"""lm-evaluation-harness backend for LLaDA: `--model llada_hf`.

Importing this module registers the model type "llada_hf" with `lm_eval`. The `lm_eval` CLI only knows its built-in
models (it has no plugin discovery), so run it through this module, which imports itself and then calls lm-eval's CLI:

    python -m llada_hf.lm_eval_backend --model llada_hf --model_args pretrained=GSAI-ML/LLaDA-8B-Base,preset=base \\
        --tasks arc_challenge --batch_size 8

or from Python: `import llada_hf.lm_eval_backend` and then `lm_eval.simple_evaluate(model="llada_hf", ...)`.

- `loglikelihood`: the official Monte-Carlo ELBO (`llada_hf.likelihood.batch_log_likelihood`), many requests per
  forward. `is_greedy` is only computed with `is_check_greedy=True` (a greedy one-token-per-step `generate()` of the
  answer's length must reproduce the answer); otherwise it is False, as in the official evaluation, since no metric
  of the paper uses it.
- `loglikelihood_rolling`: the ELBO of each document, summed over lm-eval's disjoint rolling windows of `max_length`
  tokens (each window's tokens are scored given the tokens before it that still fit: one for a full window, BOS for
  the first). It is a lower bound, so perplexities are upper bounds.
- `generate_until`: `model.generate()` (the official sampler), text cut at the first stop sequence.

Per-task settings (`preset=base|instruct|instruct_semi_ar|llada1.5`) follow the official evaluation; see
`docs/EVAL.md` and `PRESETS`. Explicit model arguments always win over a preset.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from typing import Any

import lm_eval.models  # noqa: F401  (registers the built-in models first; get_model() skips that if ours is alone)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from .likelihood import METHODS, batch_log_likelihood

logger = logging.getLogger(__name__)

MODEL_NAME = "llada_hf"

# Official defaults (ML-GSAI eval_llada.py): used where neither a model argument nor a preset sets a value.
DEFAULTS: dict[str, Any] = {
    "mc_num": 128,
    "batch_size": 32,
    "cfg": 0.0,
    "gen_length": 1024,
    "steps": 1024,
    "block_length": 1024,
    "remasking": "low_confidence",
    "temperature": 0.0,
    "logits_eos_inf": False,
    "confidence_eos_eot_inf": False,
}

# Generation settings; all but temperature may also come per request from `--gen_kwargs`.
GEN_KWARGS = ("gen_length", "steps", "block_length", "remasking", "cfg", "temperature", "logits_eos_inf",
              "confidence_eos_eot_inf")  # fmt: skip

_PPL = {"mc_num": 128, "batch_size": 8}
_GEN_1024 = {"gen_length": 1024, "steps": 1024, "block_length": 1024}


def _gen(length: int, block: int, conf: bool = False, eos: bool = False) -> dict[str, Any]:
    # Steps are not given by EVAL.md for Instruct / 1.5; one token per step (steps = gen_length) is assumed.
    return {"gen_length": length, "steps": length, "block_length": block, "confidence_eos_eot_inf": conf,
            "logits_eos_inf": eos}  # fmt: skip


# Keys are lm-eval task names; a task uses the longest key equal to its name or prefixing it followed by "_".
# Sources and verification status: docs/EVAL.md.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # LLaDA-8B-Base, lm-eval (ML-GSAI eval_llada_lm_eval.sh; paper Tab. 1 used cfg = 0 everywhere).
    "base": {
        "gpqa_main_n_shot": {**_PPL, "cfg": 0.5},
        "truthfulqa_mc2": {**_PPL, "cfg": 2.0},
        "arc_challenge": {**_PPL, "cfg": 0.5},
        "hellaswag": {**_PPL, "cfg": 0.5},
        "winogrande": {**_PPL, "cfg": 0.0},
        "piqa": {**_PPL, "cfg": 0.5},
        "mmlu": {"mc_num": 1, "batch_size": 1, "cfg": 0.0},
        "cmmlu": {"mc_num": 1, "batch_size": 1, "cfg": 0.0},
        "ceval-valid": {"mc_num": 1, "batch_size": 1, "cfg": 0.0},
        "bbh": dict(_GEN_1024),
        "gsm8k": dict(_GEN_1024),
        "minerva_math": dict(_GEN_1024),
        "humaneval": dict(_GEN_1024),
        "mbpp": dict(_GEN_1024),
    },
    # LLaDA-8B-Instruct, pure diffusion (EVAL.md, OpenCompass); lm-eval task mapping unverified.
    "instruct": {
        "mmlu": _gen(3, 3),
        "mmlu_pro": _gen(256, 256),
        "hellaswag": _gen(3, 3),
        "arc_challenge": _gen(512, 512),
        "gsm8k": _gen(512, 512, conf=True),
        "minerva_math": _gen(512, 512, conf=True),
        "gpqa": _gen(64, 64, conf=True),
        "humaneval": _gen(512, 512, eos=True),
        "mbpp": _gen(256, 256, conf=True),
    },
    # LLaDA-8B-Instruct with semi-autoregressive blocks (EVAL.md: better on GSM8K and Math).
    "instruct_semi_ar": {
        "gsm8k": _gen(256, 8),
        "minerva_math": _gen(512, 64),
    },
    # LLaDA 1.5 (EVAL.md, OpenCompass); lm-eval task mapping unverified.
    "llada1.5": {
        "gsm8k": _gen(256, 16, conf=True),
        "minerva_math": _gen(1024, 128, conf=True),
        "gpqa": _gen(256, 16),
        "humaneval": _gen(512, 32, conf=True),
        "mbpp": _gen(512, 32, conf=True),
        "ifeval": _gen(256, 16, conf=True),
    },
}


def preset_for_task(preset: str | None, task_name: str | None) -> dict[str, Any]:
    """The preset entry for `task_name`: the longest key equal to it or prefixing it followed by '_' ({} if none)."""
    if preset is None or task_name is None:
        return {}
    table = PRESETS[preset]
    keys = [key for key in table if task_name == key or task_name.startswith(key + "_")]
    return dict(table[max(keys, key=len)]) if keys else {}


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return bool(value)


def _parse_batch_size(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return None  # "auto" has no meaning here: the estimator's batch size is a statistical setting
    return int(value)


class LLaDAEvalHarness(TemplateLM):
    """lm-eval `LM` for LLaDA checkpoints (official or native), scored with the diffusion ELBO, generated with the
    diffusion sampler.

    Model arguments (`--model_args k=v,...`; the official script's names are accepted too):
        pretrained / model_path: checkpoint path or hub id (or a loaded model, from Python).
        tokenizer: tokenizer path (default: `pretrained`) or object.
        dtype: "bfloat16" (official), "float32", "float16" or "auto". device: default cuda if available.
        preset: per-task settings table (`PRESETS`): base, instruct, instruct_semi_ar, llada1.5.
        mc_num, batch_size (= lm-eval's --batch_size), cfg: the likelihood estimator (official meaning: mc_num samples
            in groups of batch_size with stratified mask counts). method: "mc" (official), "stratified" or "exact"
            (deterministic deviations, see `llada_hf.likelihood`). seed: the stratified design's seed.
        rows_per_forward: rows packed into one forward when scoring (memory knob; does not change the estimator).
        is_check_greedy: compute `is_greedy` (slow: one generate per request). max_length: context limit.
        gen_length, steps, block_length, remasking, temperature, logits_eos_inf, confidence_eos_eot_inf: generation.
        gen_batch_size: prompts per generate() call (left-padded; rows get the answers they would get alone).
        mask_id: mask token id (default: the model config's). add_special_tokens: passed to the tokenizer (default:
            the tokenizer's own default, off once a chat template has been applied).
    """

    backend = "causal"  # how TemplateLM._encode_pair splits context/continuation: encode the whole, then cut

    def __init__(
        self,
        pretrained: Any = None,
        model_path: str | None = None,
        tokenizer: Any = None,
        dtype: str | torch.dtype | None = "bfloat16",
        device: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        preset: str | None = None,
        mc_num: int | None = None,
        cfg: float | None = None,
        cfg_scale: float | None = None,
        method: str = "mc",
        seed: int = 0,
        rows_per_forward: int = 32,
        is_check_greedy: bool = False,
        max_length: int = 4096,
        gen_length: int | None = None,
        steps: int | None = None,
        block_length: int | None = None,
        remasking: str | None = None,
        temperature: float | None = None,
        logits_eos_inf: bool | None = None,
        confidence_eos_eot_inf: bool | None = None,
        gen_batch_size: int = 1,
        mask_id: int | None = None,
        add_special_tokens: bool | None = None,
        trust_remote_code: bool = False,
        harness_batch_size: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            logger.warning("llada_hf: ignoring unknown model arguments %s", sorted(kwargs))
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; valid: {sorted(PRESETS)}.")
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; valid: {METHODS}.")
        if cfg is not None and cfg_scale is not None and float(cfg) != float(cfg_scale):
            raise ValueError("Pass either cfg or cfg_scale, not both.")
        self.preset = preset
        self.method = method
        self.seed = int(seed)
        self.rows_per_forward = int(rows_per_forward)
        self.is_check_greedy = _to_bool(is_check_greedy)
        self.max_length = int(max_length)
        self.gen_batch_size = int(gen_batch_size)
        self.add_special_tokens = None if add_special_tokens is None else _to_bool(add_special_tokens)
        self._chat_templated = False
        # Values the user set explicitly: they override presets and defaults.
        explicit = {
            "mc_num": mc_num, "batch_size": _parse_batch_size(batch_size),
            "cfg": cfg if cfg is not None else cfg_scale,
            "gen_length": gen_length, "steps": steps, "block_length": block_length, "remasking": remasking,
            "temperature": temperature, "logits_eos_inf": logits_eos_inf,
            "confidence_eos_eot_inf": confidence_eos_eot_inf,
        }  # fmt: skip
        self.explicit = {k: v for k, v in explicit.items() if v is not None}
        # lm-eval's --batch_size (always passed by its CLI, default 1) ranks below presets: see create_from_arg_obj.
        harness_batch_size = _parse_batch_size(harness_batch_size)
        self.harness_defaults = {} if harness_batch_size is None else {"batch_size": harness_batch_size}

        self.accelerator = None
        self._setup_distributed()
        self.model = self._load_model(pretrained if pretrained is not None else model_path, dtype, device,
                                      trust_remote_code)  # fmt: skip
        self.tokenizer = self._load_tokenizer(tokenizer, pretrained if pretrained is not None else model_path,
                                              trust_remote_code)  # fmt: skip
        self.mask_id = int(mask_id) if mask_id is not None else getattr(self.model.config, "mask_token_id", None)
        if self.mask_id is None:
            raise ValueError("The model config has no mask_token_id; pass mask_id=... in --model_args.")
        settings = self.settings(None)  # fail before loading data when the explicit settings cannot work
        if self.method == "mc" and settings["mc_num"] % settings["batch_size"]:
            raise ValueError(
                f"mc_num ({settings['mc_num']}) must be divisible by batch_size ({settings['batch_size']})."
            )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LLaDAEvalHarness:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> LLaDAEvalHarness:
        """`--model_args` win over lm-eval's own options (the base class fails when both set device/batch_size).

        lm-eval's `--batch_size` becomes `harness_batch_size`: it ranks below a preset's per-task batch size (its CLI
        always passes one, so `--batch_size 8` must not break MMLU's mc_num=1), while `batch_size` in `--model_args`
        ranks above."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if "batch_size" in extra:
            extra["harness_batch_size"] = extra.pop("batch_size")
        return cls(**arg_dict, **extra)

    # ----------------------------------------------------------------------------------------------------------------
    # Setup

    def _setup_distributed(self) -> None:
        """Data parallel under `accelerate launch`, like lm-eval's HF backend (untested here: single process only)."""
        try:
            from accelerate import Accelerator, PartialState
        except ImportError:  # pragma: no cover
            return
        if PartialState().num_processes > 1:
            self.accelerator = Accelerator()
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes

    def _load_model(self, pretrained, dtype, device, trust_remote_code):
        from transformers import AutoModel, PreTrainedModel

        import llada_hf  # noqa: F401  (registers the Auto classes)

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            logger.warning("llada_hf: device %s requested but CUDA is not available; using the CPU.", device)
            device = "cpu"  # lm-eval's CLI passes --device cuda:0 unless told otherwise
        if self.accelerator is not None:
            device = self.accelerator.device
        self._device = torch.device(device)
        if isinstance(pretrained, PreTrainedModel):
            model = pretrained
        else:
            if pretrained is None:
                raise ValueError("Pass pretrained=PATH (or model_path=PATH) in --model_args.")
            if isinstance(dtype, str) and dtype != "auto":
                dtype = getattr(torch, dtype)
            model = AutoModel.from_pretrained(pretrained, dtype=dtype, trust_remote_code=_to_bool(trust_remote_code))
            model = model.to(self._device)
        return model.eval()

    def _load_tokenizer(self, tokenizer, pretrained, trust_remote_code):
        from transformers import AutoTokenizer, PreTrainedTokenizerBase

        if isinstance(tokenizer, PreTrainedTokenizerBase):
            return tokenizer
        source = tokenizer if tokenizer is not None else pretrained
        if not isinstance(source, str):
            source = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        if not source:
            raise ValueError("Pass tokenizer=PATH in --model_args (the model was given as an object).")
        return AutoTokenizer.from_pretrained(source, trust_remote_code=_to_bool(trust_remote_code))

    def settings(self, task_name: str | None) -> dict[str, Any]:
        """Effective settings: official defaults < lm-eval's --batch_size < the task's preset entry < --model_args."""
        return {**DEFAULTS, **self.harness_defaults, **preset_for_task(self.preset, task_name), **self.explicit}

    # ----------------------------------------------------------------------------------------------------------------
    # lm-eval plumbing

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Context for an empty context: BOS when the tokenizer has one (LLaDA's `<|startoftext|>`), else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_special_tokens
        if add_special_tokens is None:
            add_special_tokens = False if self._chat_templated else True  # True = the tokenizer's own default
        return self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"]

    def tok_decode(self, tokens, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template (LLaDA's writes BOS itself, so later encodes add no special tokens)."""
        self._chat_templated = True
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )  # fmt: skip

    def all_gather(self, tensor):
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst=0):
        if self.accelerator is None:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ----------------------------------------------------------------------------------------------------------------
    # Likelihood

    def _encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """TemplateLM's encoding (trailing context spaces move to the continuation; empty context -> prefix token),
        then the context is cut from the left to fit `max_length`."""
        if context == "":
            continuation_enc = self.tok_encode(continuation, add_special_tokens=False)
            context_enc = [self.prefix_token_id]
        else:
            context_enc, continuation_enc = self._encode_pair(context, continuation)
        if not continuation_enc:
            raise ValueError(f"The continuation {continuation!r} encodes to no tokens: there is nothing to score.")
        if len(continuation_enc) >= self.max_length:
            raise ValueError(
                f"Continuation of {len(continuation_enc)} tokens does not fit max_length={self.max_length}."
            )
        overflow = len(context_enc) + len(continuation_enc) - self.max_length
        if overflow > 0:
            logger.warning("llada_hf: context cut by %d tokens from the left to fit max_length.", overflow)
            context_enc = context_enc[overflow:]
        return context_enc, continuation_enc

    def _score(self, pairs: list[tuple[list[int], list[int]]], settings: dict[str, Any]) -> list[float]:
        return batch_log_likelihood(
            self.model, pairs, mc_num=int(settings["mc_num"]), batch_size=int(settings["batch_size"]),
            cfg_scale=float(settings["cfg"]), mask_token_id=self.mask_id, method=self.method, seed=self.seed,
            rows_per_forward=self.rows_per_forward,
        )  # fmt: skip

    def _score_by_task(self, items: list[tuple[str | None, list[int], list[int]]]) -> list[float]:
        """Score (task, context ids, continuation ids) items; items with equal settings share forwards. Within a
        settings group the order (and so the random draws) is the request order, as in the official loop."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, (task, _, _) in enumerate(items):
            settings = self.settings(task)
            groups[(settings["mc_num"], settings["batch_size"], settings["cfg"])].append(index)
        values: list[float] = [0.0] * len(items)
        for indices in groups.values():
            settings = self.settings(items[indices[0]][0])
            scores = self._score([(items[i][1], items[i][2]) for i in indices], settings)
            for i, score in zip(indices, scores):
                values[i] = score
        return values

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, task_names=None) -> list[tuple[float, bool]]:
        """(ELBO, is_greedy) for TemplateLM-style requests ((context, continuation), context ids, continuation ids)."""
        task_names = task_names or [None] * len(requests)
        items = [(task, list(ctx), list(cont)) for task, (_, ctx, cont) in zip(task_names, requests)]
        values = self._score_by_task(items)
        results = []
        for (task, ctx, cont), value, request in tqdm(
            list(zip(items, values, requests)),
            desc="llada_hf is_greedy",
            disable=disable_tqdm or not self.is_check_greedy,
        ):
            greedy = self._is_greedy(ctx, cont, self.settings(task)) if self.is_check_greedy else False
            results.append((value, greedy))
            self.cache_hook.add_partial("loglikelihood", request[0], (value, greedy))
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """ELBO of each continuation given its context, with the settings of the request's task."""
        encoded, task_names = [], []
        for request in requests:
            context, continuation = request.args
            encoded.append(((context, continuation), *self._encode_request(context, continuation)))
            task_names.append(getattr(request, "task_name", None))
        return self._loglikelihood_tokens(encoded, disable_tqdm=disable_tqdm, task_names=task_names)

    @torch.no_grad()
    def _is_greedy(self, context: list[int], continuation: list[int], settings: dict[str, Any]) -> bool:
        """Whether greedy decoding of len(continuation) tokens, one per step (most confident first), reproduces it."""
        length = len(continuation)
        output = self.model.generate(
            torch.tensor([context], device=self._device), max_new_tokens=length, steps=length, block_length=length,
            temperature=0.0, cfg_scale=float(settings["cfg"]), remasking="low_confidence", mask_token_id=self.mask_id,
        )  # fmt: skip
        return output[0, len(context) :].tolist() == list(continuation)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """ELBO of whole documents, summed over lm-eval's disjoint rolling windows (see the module docstring)."""
        items, owners = [], []
        for doc_index, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length - 1, 1)
            for context, continuation in map(make_disjoint_window, windows):
                items.append((getattr(request, "task_name", None), context, continuation))
                owners.append(doc_index)
        values = self._score_by_task(items)
        totals = [0.0] * len(requests)
        for owner, value in zip(owners, values):
            totals[owner] += value
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ----------------------------------------------------------------------------------------------------------------
    # Generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (temperature 0 unless set) diffusion generation; the text is cut at the first stop sequence, then
        special tokens are dropped (as the official harness does)."""
        outputs: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            settings = self._generation_settings(request)
            groups[tuple(sorted(settings.items()))].append(index)
        progress = tqdm(total=len(requests), desc="llada_hf generate", disable=disable_tqdm)
        for key, indices in groups.items():
            settings = dict(key)
            for start in range(0, len(indices), self.gen_batch_size):
                batch = indices[start : start + self.gen_batch_size]
                texts = self._generate_batch([requests[i].args[0] for i in batch], settings)
                for i, text in zip(batch, texts):
                    stops = requests[i].args[1].get("until") or []
                    outputs[i] = self._postprocess(text, [stops] if isinstance(stops, str) else list(stops))
                    self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
                progress.update(len(batch))
        progress.close()
        return outputs  # type: ignore[return-value]

    def _generation_settings(self, request) -> dict[str, Any]:
        """Task settings, overridden by diffusion keys in the request's gen_kwargs (`--gen_kwargs steps=...`); the
        task's own temperature counts only with do_sample and when `temperature` is not a model argument."""
        settings = self.settings(getattr(request, "task_name", None))
        gen_kwargs = dict(request.args[1]) if len(request.args) > 1 and request.args[1] else {}
        if "cfg_scale" in gen_kwargs:
            gen_kwargs.setdefault("cfg", gen_kwargs.pop("cfg_scale"))
        for key in GEN_KWARGS:
            if key in gen_kwargs and key != "temperature":
                settings[key] = gen_kwargs[key]
        if "temperature" not in self.explicit and gen_kwargs.get("do_sample") and gen_kwargs.get("temperature"):
            settings["temperature"] = float(gen_kwargs["temperature"])
        return {key: settings[key] for key in GEN_KWARGS}

    @torch.no_grad()
    def _generate_batch(self, contexts: list[str], settings: dict[str, Any]) -> list[str]:
        gen_length = int(settings["gen_length"])
        encoded = [self.tok_encode(context) for context in contexts]
        room = self.max_length - gen_length
        encoded = [ids[-room:] if room > 0 and len(ids) > room else ids for ids in encoded]
        width = max(len(ids) for ids in encoded)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
        sampling = {"temperature": float(settings["temperature"])} if settings["temperature"] else {}
        output = self.model.generate(
            input_ids.to(self._device),
            attention_mask=attention_mask.to(self._device) if len(encoded) > 1 else None,
            max_new_tokens=gen_length, steps=int(settings["steps"]), block_length=int(settings["block_length"]),
            cfg_scale=float(settings["cfg"]),
            remasking=settings["remasking"], mask_token_id=self.mask_id,
            suppress_eos_logits=bool(settings["logits_eos_inf"]),
            suppress_eos_confidence="official" if settings["confidence_eos_eot_inf"] else None, **sampling,
        )  # fmt: skip
        return [self.tokenizer.decode(row[width:].tolist(), skip_special_tokens=False) for row in output]

    def _postprocess(self, text: str, stops: list[str]) -> str:
        """Cut at the earliest stop sequence, then drop special tokens by re-encoding (the official order)."""
        cut = min((text.index(stop) for stop in stops if stop and stop in text), default=len(text))
        ids = self.tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


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


__all__ = ["DEFAULTS", "MODEL_NAME", "PRESETS", "LLaDAEvalHarness", "main", "preset_for_task", "register"]
