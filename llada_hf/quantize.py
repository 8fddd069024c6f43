"""Quantised inference through the standard `from_pretrained(quantization_config=...)` path.

`--quantize` on `llada-hf demo` / `chat`, or `load_quantized(path, "int8")` from Python:

| name | library | weights | where |
|---|---|---|---|
| `int8` | torchao `Int8WeightOnlyConfig` via `TorchAoConfig` | int8, one scale per output row | CPU and CUDA |
| `int4` | torchao `IntxWeightOnlyConfig(int4, PerGroup(32))` | int4, one scale per 32 | CPU and CUDA |
| `nf4` | bitsandbytes `BitsAndBytesConfig(load_in_4bit, nf4)` | 4-bit NormalFloat, packed | CUDA only |

Only the transformer's `nn.Linear` layers are quantised (attention and MLP projections); embeddings, norms and the
LM head stay in the checkpoint's dtype. A quantised model saves with `save_pretrained` and loads back with a plain
`from_pretrained` (the config carries the `quantization_config`; torchao must be installed to read it).

`int4` uses torchao's unpacked int4 layout (`IntxUnpackedToInt8Tensor`: int4 values held in int8, dequantised in
the matmul): it runs on any device, but its stored bytes are those of int8 plus group scales. torchao 0.18's packed
int4 layouts need its CUDA tinygemm kernel (`tile_packed_to_4d`) or the `mslk` package (`plain`), neither of which
runs on a CPU build. `get_memory_footprint()` counts a tensor subclass by its outer shape and dtype (the fp32 size):
measure quantised models by their stored bytes (`stored_bytes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

QUANTIZE_CHOICES = ("int8", "int4", "nf4")
INT4_GROUP_SIZE = 32

try:  # the CLI's one-line error type (llada_hf.loading); a plain RuntimeError subclass where it is absent
    from .loading import ModelLoadError as _Base
except ImportError:  # pragma: no cover
    _Base = RuntimeError


class QuantizationError(_Base):
    """A quantisation request that cannot work here (missing package, no GPU, unknown name); one line."""


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def quantization_config(name: str) -> Any:
    """The transformers quantisation config for `name` (one of `QUANTIZE_CHOICES`); `QuantizationError` when the
    library or the device it needs is missing."""
    if name not in QUANTIZE_CHOICES:
        raise QuantizationError(f"unknown quantisation {name!r} (choose from {', '.join(QUANTIZE_CHOICES)})")
    if name == "nf4":  # the one bitsandbytes config (`llada_hf.loading.quantization_config`)
        from .loading import ModelLoadError
        from .loading import quantization_config as bitsandbytes_config

        try:
            return bitsandbytes_config(load_in_4bit=True, flag="--quantize nf4")
        except ModelLoadError as error:
            raise QuantizationError(
                f"{error}" + ("; on a CPU use --quantize int8 or int4 (torchao)" if "CUDA" in str(error) else "")
            ) from None
    if not torchao_available():
        raise QuantizationError(f"--quantize {name} needs torchao: pip install 'llada_hf[quant]' (or torchao)")
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    if name == "int8":
        return TorchAoConfig(Int8WeightOnlyConfig())
    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP_SIZE)))


def load_quantized(
    model_path: str | os.PathLike | None,
    quantize: str,
    dtype: str | torch.dtype = "auto",
    device_map: str | None = None,
    attn_implementation: str | None = None,
):
    """(model, tokenizer) quantised on load; `model_path` None = the embedded demo model (fp32 before quantising).

    Without `device_map`: the GPU when there is one (bitsandbytes always places through accelerate), else the CPU.
    """
    from .loading import ModelLoadError, load_model_and_tokenizer

    config = quantization_config(quantize)
    if model_path is not None:
        model_path = str(model_path)
    if device_map is None and torch.cuda.is_available():
        device_map = "cuda"
    try:  # the one loader (every family), with this quantisation config
        return load_model_and_tokenizer(model_path, dtype, device_map, attn_implementation, quantization=config)
    except QuantizationError:
        raise
    except ModelLoadError as error:
        raise QuantizationError(f"{error} (quantised: {quantize})") from error


def stored_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the weight files of a saved model (`*.safetensors`, `*.bin`): the real size of a quantised model."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))


def quantized_linear_count(model: torch.nn.Module) -> int:
    """How many `nn.Linear` weights are quantised (a tensor subclass or a bitsandbytes parameter)."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight
            plain = type(weight) in (torch.Tensor, torch.nn.Parameter)
            count += int(not plain or weight.dtype in (torch.int8, torch.uint8))
    return count


__all__ = [
    "INT4_GROUP_SIZE",
    "QUANTIZE_CHOICES",
    "QuantizationError",
    "load_quantized",
    "quantization_config",
    "quantized_linear_count",
    "stored_bytes",
    "torchao_available",
]
