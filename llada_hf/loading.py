"""The one loader of every family (LLaDA-8B, LLaDA-MoE, LLaDA2), and the one lookup of the input device of a model.

`load_model_and_tokenizer` is what `llada-hf chat/demo/export/memory/quantize` share (kept out of `cli.py` and
`demo.py` so neither imports the other); `load_model` / `load_config` are what `llada-hf train` uses (checkpoints, or
a `TINY_CONFIGS` name trained from scratch). All go through the Auto classes (the family is read from `config.json`),
with one bitsandbytes config (`quantization_config`) and a `ModelLoadError` with one line when the model is missing or
the request cannot work here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .progress import interactive

DEMO_DIR = Path(__file__).parent / "assets" / "demo"  # the embedded demo model (see `llada_hf.demo`)
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2")


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded as asked; the message is one line, meant for the user."""


def model_device(model: Any) -> torch.device:
    """The device a model's inputs go to: its embedding's, or, when accelerate offloaded the embedding, the device
    its hook computes on. The same lookup `generate()` uses (peft-wrapped models forward it to the base model)."""
    return model._diffusion_device(None)


def resolve_mask_token_id(model: Any, mask_token_id: int | None = None) -> int:
    """`mask_token_id` if given, else the model config's, else its generation config's (the one mask-id lookup of the
    losses and the likelihood)."""
    if mask_token_id is None:
        for source in (getattr(model, "config", None), getattr(model, "generation_config", None)):
            mask_token_id = getattr(source, "mask_token_id", None)
            if mask_token_id is not None:
                break
    if mask_token_id is None:
        raise ValueError("mask_token_id is not set: pass it, or set it in the model config.")
    return int(mask_token_id)


def resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """ "auto" stays "auto" (the checkpoint's dtype); a name from `DTYPES` becomes the torch dtype."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return getattr(torch, dtype)


def quantization_config(
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    compute_dtype: torch.dtype | None = None,
    flag: str | None = None,
) -> Any:
    """The one `BitsAndBytesConfig` (chat, train's QLoRA, quantize's nf4), or None; needs a CUDA GPU and bitsandbytes.

    4-bit is NF4 (QLoRA's data type) computing in `compute_dtype` (default bfloat16). `flag` names the option in the
    error messages (default `--load-in-8bit` / `--load-in-4bit`).
    """
    if not (load_in_8bit or load_in_4bit):
        return None
    flag = flag or ("--load-in-8bit" if load_in_8bit else "--load-in-4bit")
    if load_in_8bit and load_in_4bit:
        raise ModelLoadError("choose one of --load-in-8bit and --load-in-4bit")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"{flag} needs a CUDA GPU (bitsandbytes quantisation); none is available here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ModelLoadError(f"{flag} needs bitsandbytes: pip install bitsandbytes") from error
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16
    )


def load_model_and_tokenizer(
    model_path: str | None,
    dtype: str | torch.dtype = "auto",
    device_map: str | None = None,
    attn_implementation: str | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    quantization: Any = None,
):
    """(model, tokenizer) in eval mode: a local folder or hub id, or the embedded demo model when no path is given.

    Without `device_map` the model goes to the GPU when there is one (as before), else stays on the CPU; with one
    (`"auto"`, `"cuda:0"`, `"cpu"`, ...) accelerate places it. A missing model raises `ModelLoadError` (one line).
    `quantization`: a ready transformers quantisation config (torchao's, from `llada_hf.quantize`) instead of the
    bitsandbytes flags.
    """
    from transformers import AutoModel, AutoTokenizer

    from . import register

    register()
    if not interactive():  # piped / captured: no "Loading weights" bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    quantization = quantization if quantization is not None else quantization_config(load_in_8bit, load_in_4bit)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if type(quantization).__name__ == "BitsAndBytesConfig":  # bitsandbytes always places through accelerate
            device_map = device_map or "auto"
    if device_map is not None:
        kwargs["device_map"] = device_map
    if model_path is None:
        model_path = str(DEMO_DIR)
        if kwargs["dtype"] == "auto":
            kwargs["dtype"] = torch.float32
    elif looks_local(model_path) and not os.path.isdir(model_path):
        raise ModelLoadError(f"no model at {model_path}: not a folder (give a checkpoint folder or a hub id)")
    try:
        model = AutoModel.from_pretrained(model_path, **kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load {model_path}: {first}") from error
    if device_map is None and torch.cuda.is_available():
        model = model.to("cuda")
    choose_sampler(model, model_path)
    return model, tokenizer


def choose_sampler(model: Any, name_or_path: str | None) -> None:
    """LLaDA2.1 checkpoints have LLaDA2.0's `config.json`: a model whose name or path contains "LLaDA2.1" (any case)
    gets `sampler="llada2.1"` (token editing) in its generation config, as `hub_configs/generation/` publishes it, so
    chat and serve use the sampler it was trained for. A generation config naming another sampler than the default
    keeps it."""
    config = getattr(model, "generation_config", None)
    if name_or_path and "llada2.1" in str(name_or_path).lower() and getattr(config, "sampler", None) == "llada2.0":
        config.sampler = "llada2.1"


# Small configs to train from scratch by name (smoke tests, toy tasks): the `llada_hf/<name>` hub configs, whose
# special ids are the tiny tokenizer's.
TINY_CONFIG_NAMES = ("tiny", "small")
_TINY_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
)  # fmt: skip


def _tiny_configs() -> dict[str, dict[str, Any]]:
    from .hub import load_hub_config

    return {
        name: {key: getattr(load_hub_config(f"llada_hf/{name}"), key) for key in _TINY_KEYS}
        for name in TINY_CONFIG_NAMES
    }


TINY_CONFIGS: dict[str, dict[str, Any]] = _tiny_configs()


def load_config(name_or_path: str, revision: str | None = None) -> Any:
    """The config of a checkpoint of any family (`AutoConfig`), or of a `TINY_CONFIGS` name; `ModelLoadError` if
    there is none (read before any weights, so flags and data can be checked against it)."""
    from transformers import AutoConfig

    from . import register
    from .modeling import LLaDAConfig

    register()
    if name_or_path in TINY_CONFIGS:
        return LLaDAConfig(**TINY_CONFIGS[name_or_path])
    if looks_local(name_or_path) and not os.path.isdir(name_or_path):
        raise ModelLoadError(f"no model at {name_or_path}: not a folder (give a checkpoint folder or a hub id)")
    try:
        return AutoConfig.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load the config of {name_or_path}: {first}") from error


def load_model(
    name_or_path: str,
    dtype: torch.dtype | str | None = None,
    load_in_4bit: bool = False,
    seed: int = 0,
    **kwargs: Any,
) -> Any:
    """A model to train: a checkpoint of any family (path or hub id, `AutoModel`), or a `TINY_CONFIGS` name,
    randomly initialised from `seed`.

    `load_in_4bit` quantises the frozen base (QLoRA: `quantization_config`, NF4) and prepares it for k-bit training.
    Other keyword arguments (`revision`, `attn_implementation`, `distributed_config=fsdp_config()` for FSDP2 sharding
    under `torchrun`, ...) go to `from_pretrained`; None values are dropped.
    """
    from transformers import AutoModel

    from . import register
    from .modeling import LLaDAConfig, LLaDAModelLM

    register()
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    if name_or_path in TINY_CONFIGS:
        torch.manual_seed(seed)
        model = LLaDAModelLM(LLaDAConfig(**TINY_CONFIGS[name_or_path]))
        if kwargs.get("distributed_config") is None:
            return model.to(dtype) if dtype is not None else model
        # Sharding happens in `from_pretrained`: every rank passes the same seeded weights, each keeps its shards.
        kwargs.update(config=model.config, state_dict=model.state_dict())
        return LLaDAModelLM.from_pretrained(None, **kwargs, **({"dtype": dtype} if dtype is not None else {}))
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        kwargs["quantization_config"] = quantization_config(
            load_in_4bit=True, compute_dtype=dtype, flag="--load_in_4bit"
        )
        return prepare_model_for_kbit_training(AutoModel.from_pretrained(name_or_path, **kwargs))
    return AutoModel.from_pretrained(name_or_path, **kwargs)


def looks_local(path: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative with ./ or ../, ~, or more than one slash."""
    return path.startswith(("/", "./", "../", "~", ".")) or path.count("/") > 1 or os.path.exists(path)


__all__ = [
    "DEMO_DIR",
    "TINY_CONFIGS",
    "load_config",
    "load_model",
    "ATTN_IMPLEMENTATIONS",
    "DTYPES",
    "ModelLoadError",
    "load_model_and_tokenizer",
    "looks_local",
    "model_device",
    "quantization_config",
    "resolve_dtype",
    "resolve_mask_token_id",
]
