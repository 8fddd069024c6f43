"""Loading a model for the command line, and the one lookup of the device a model's inputs go to.

`load_model_and_tokenizer` is what `llada-hf chat/demo/export/memory` share (kept out of `cli.py` and `demo.py` so
neither imports the other): the Auto classes with `dtype`, `device_map`, `attn_implementation` and bitsandbytes
quantisation, and a `ModelLoadError` with one line when the model is missing or the request cannot work here.
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


def quantization_config(load_in_8bit: bool = False, load_in_4bit: bool = False) -> Any:
    """A `BitsAndBytesConfig` for the flags, or None; bitsandbytes needs a CUDA GPU and the package."""
    if not (load_in_8bit or load_in_4bit):
        return None
    flag = "--load-in-8bit" if load_in_8bit else "--load-in-4bit"
    if load_in_8bit and load_in_4bit:
        raise ModelLoadError("choose one of --load-in-8bit and --load-in-4bit")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"{flag} needs a CUDA GPU (bitsandbytes quantisation); none is available here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ModelLoadError(f"{flag} needs bitsandbytes: pip install bitsandbytes") from error
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit)


def load_model_and_tokenizer(
    model_path: str | None,
    dtype: str | torch.dtype = "auto",
    device_map: str | None = None,
    attn_implementation: str | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
):
    """(model, tokenizer) in eval mode: a local folder or hub id, or the embedded demo model when no path is given.

    Without `device_map` the model goes to the GPU when there is one (as before), else stays on the CPU; with one
    (`"auto"`, `"cuda:0"`, `"cpu"`, ...) accelerate places it. A missing model raises `ModelLoadError` (one line).
    """
    from transformers import AutoModel, AutoTokenizer

    from . import register

    register()
    if not interactive():  # piped / captured: no "Loading weights" bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    quantization = quantization_config(load_in_8bit, load_in_4bit)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = quantization
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
    return model, tokenizer


def looks_local(path: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative with ./ or ../, ~, or more than one slash."""
    return path.startswith(("/", "./", "../", "~", ".")) or path.count("/") > 1 or os.path.exists(path)


__all__ = [
    "DEMO_DIR",
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
