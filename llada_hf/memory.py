"""Memory planning for the LLaDA family: weight bytes per device for a `device_map`, and generation's transients.

Why a helper: a masked-diffusion LM has no KV cache, so one `generate()` step is a full forward over prompt + canvas,
and its largest transient is the (batch, seq, vocab) logits tensor and the sampler's work on it (126,464 columns for
the 8B model), not the layers' activations. `estimate_memory` says, before loading 16 GB, what each device has to hold.

Weights come from the model itself, built on the meta device (`meta_model`: any registered type, LLaDA-8B, LLaDA-MoE,
LLaDA2.0), sized with accelerate's `compute_module_sizes`; string device maps ("auto", "balanced", ...) are resolved
by the same transformers function `from_pretrained` uses (accelerate's `infer_auto_device_map` underneath), explicit
maps are checked by accelerate's `check_device_map` and read by transformers' `expand_device_map` / `get_device` (the
placement `from_pretrained` itself uses), so the planned map is the map a load produces. One denoising step's working
set is generate()'s own pre-check, `llada_hf.generation.estimate_step_bytes`, over the canvas and logits window that
the sampler's layout part gives generate() (`generation_step`): no library models a diffusion sampler. `llada-hf
memory MODEL` prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedConfig
from transformers.integrations.accelerate import expand_device_map, get_device

from .generation import estimate_step_bytes
from .loading import ATTN_IMPLEMENTATIONS

Device = int | str
DEFAULT_MODEL = "GSAI-ML/LLaDA-8B-Instruct"  # what `llada-hf memory` estimates without a MODEL


def meta_model(config: PreTrainedConfig, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The model `from_pretrained` builds for `config` (any registered LLaDA type), on the meta device: no memory.

    Parameters are created in `dtype`, as `from_pretrained(dtype=...)` does; buffers keep their own dtype (fp32 RoPE).
    """
    from transformers import AutoModel

    from . import register

    register()
    with torch.device("meta"), _default_dtype(dtype):
        return AutoModel.from_config(config)


def parameter_shapes(config: PreTrainedConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the model for `config` (a meta-device model; a tied head is listed once,
    as `model.parameters()` does)."""
    return {name: tuple(p.shape) for name, p in meta_model(config).named_parameters()}


def buffer_shapes(config: PreTrainedConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every buffer (the RoPE tables; MoE router biases), from a meta-device model."""
    return {name: tuple(b.shape) for name, b in meta_model(config).named_buffers()}


def count_parameters(config: PreTrainedConfig) -> int:
    """Number of parameters of the model for `config` (8,015,581,184 for `LLaDAConfig()`, the 8B)."""
    return sum(p.numel() for p in meta_model(config).parameters())


def active_parameters(model: torch.nn.Module, config: PreTrainedConfig) -> int | None:
    """Parameters one token runs through in a mixture-of-experts model (all but the unrouted experts); None for a
    dense model. Each `experts` ModuleList contributes `num_experts_per_tok` of its experts."""
    top_k = getattr(config, "num_experts_per_tok", None)
    if not top_k:
        return None
    inactive = 0
    for name, module in model.named_modules():
        if name.endswith("experts") and isinstance(module, torch.nn.ModuleList) and len(module) > top_k:
            inactive += (len(module) - top_k) * sum(p.numel() for p in module[0].parameters())
    return sum(p.numel() for p in model.parameters()) - inactive


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a LLaDA model needs; `per_device` is what to compare with each device's free memory.

    `per_device[d]` = the weights resident on `d` (for "cpu"/"disk" entries: stored there, computed on the main
    device) + on the devices that compute: the RoPE tables, the largest offloaded leaf module (streamed one at a time),
    the per-layer activation peak on every device that runs decoder layers, the window's logits on the head's device
    and one denoising step (`step_bytes`) on the device generate() works on. CUDA context (~0.5 GB per GPU),
    allocator fragmentation and, for training, gradients, optimizer states and saved activations are not included.
    """

    parameters: int
    active_parameters: int | None  # mixture of experts: the parameters one token runs through; None when dense
    dtype: torch.dtype
    weight_bytes: int  # all parameters in `dtype`
    buffer_bytes: int  # RoPE tables, fp32, once per computing device that holds `model.rotary_emb`
    activation_bytes: int  # peak of live tensors inside one decoder layer's forward (no_grad)
    logits_bytes: int  # the head's (rows, window, vocab) output in `dtype`
    step_bytes: int  # one denoising step beyond the weights: generate()'s pre-check figure (`estimate_step_bytes`)
    streamed_bytes: int  # the largest offloaded leaf module, onloaded to the main device during its forward
    sequence_length: int = 1024  # prompt + canvas: the tokens of every forward
    window: int = 1024  # the columns whose logits each step computes (the block under `fast`, else the canvas)
    # (`sequence_length` is generate()'s canvas: LLaDA2 rounds prompt + new tokens up to whole blocks)
    device_map: dict[str, Device] | None = None
    weights_per_device: dict[Device, int] = field(default_factory=dict)
    per_device: dict[Device, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Sum over devices, "disk" included (an upper bound for one device holding everything when unsharded)."""
        return sum(self.per_device.values())

    def summary(self) -> str:
        """A short human-readable table (GB = 1e9 bytes)."""
        active = "" if self.active_parameters is None else f", {self.active_parameters:,} active per token"
        lines = [
            f"parameters: {self.parameters:,} ({self.weight_bytes / 1e9:.2f} GB in {str(self.dtype).split('.')[-1]})"
            f"{active}",
            f"per-layer activations: {self.activation_bytes / 1e6:.1f} MB, logits ({self.window} columns): "
            f"{self.logits_bytes / 1e6:.1f} MB, one step (generate()'s pre-check): {self.step_bytes / 1e6:.1f} MB",
        ]
        for device, total in self.per_device.items():
            weights = self.weights_per_device.get(device, 0)
            lines.append(f"  {device!s:>6}: {total / 1e9:7.2f} GB (weights {weights / 1e9:.2f} GB)")
        return "\n".join(lines)


def estimate_memory(
    config: PreTrainedConfig,
    dtype: torch.dtype = torch.bfloat16,
    device_map: str | dict[str, Device] | None = None,
    batch_size: int = 1,
    seq_len: int | None = None,
    max_memory: dict[Device, int | str] | None = None,
    do_sample: bool = False,
    cfg: bool = False,
    attn_implementation: str = "sdpa",
    max_new_tokens: int | None = None,
    block_length: int | None = None,
    fast: bool | None = None,
) -> MemoryEstimate:
    """Estimate the memory of a LLaDA model and of one generation step, per device of `device_map`.

    Args:
        config: the model's config (`LLaDAConfig()` is LLaDA-8B).
        dtype: weight dtype (the checkpoints are bf16).
        device_map: `None` (everything on one device, reported as device 0), an explicit map
            `{module_name: device}` (devices: GPU index, "cpu", "disk"; checked by accelerate's `check_device_map`,
            read by transformers' `expand_device_map` as `from_pretrained` reads it), or a string as accepted by
            `from_pretrained` ("auto", "balanced", "balanced_low_0", "sequential"), then resolved with `max_memory`
            exactly as `from_pretrained` would.
        batch_size: rows per generate() call (`num_return_sequences` multiplies it).
        seq_len: prompt + `max_new_tokens`: every step runs a full forward over it (no KV cache). Default: 1024.
        max_memory: per-device limits, only used to resolve a string `device_map`.
        do_sample / cfg: generate()'s options that change the step's working set (`cfg`: classifier-free guidance
            doubles the forward batch).
        attn_implementation: "eager" materializes (batch, heads, seq, seq) scores; sdpa/flash kernels do not.
        max_new_tokens / block_length / fast: generate()'s; with the model's generation config they choose the
            sampler's parts, whose layout gives the canvas and the logits window exactly as generate() takes them
            (`generation_step`). Defaults: the whole `seq_len` is new tokens (no prompt), the rest the model's
            generation config (LLaDA: `fast`, one block; LLaDA2: blocks of 32, the canvas rounded up to whole blocks).
    """
    from accelerate.utils import compute_module_sizes

    seq_len = 1024 if seq_len is None else seq_len
    check_memory_arguments(dtype, batch_size, seq_len, max_memory, attn_implementation)
    for name, value in (("max_new_tokens", max_new_tokens), ("block_length", block_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if max_new_tokens is not None and max_new_tokens > seq_len:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) must be at most seq_len ({seq_len}, prompt included)")
    itemsize = torch.empty((), dtype=dtype).element_size()
    model = meta_model(config, dtype)
    request = dict(max_new_tokens=seq_len if max_new_tokens is None else max_new_tokens, do_sample=do_sample)
    request.update({k: v for k, v in dict(block_length=block_length, fast=fast).items() if v is not None})
    seq_len, window, sampling = generation_step(model.generation_config, seq_len, cfg=cfg, **request)
    named = dict(model.named_parameters())
    parameters = sum(p.numel() for p in named.values())
    buffer_bytes = compute_module_sizes(model, buffers_only=True)[""]  # fp32 RoPE tables (+ MoE router biases)

    rows = batch_size * (2 if cfg else 1)  # rows per forward
    tokens = rows * seq_len
    d = config.hidden_size
    # The widest MLP a token goes through: the dense one, or its routed + shared experts (MoE).
    experts = (getattr(config, "num_experts_per_tok", None) or 0) + (getattr(config, "num_shared_experts", None) or 0)
    dense = getattr(config, "intermediate_size", None) or getattr(config, "dense_intermediate_size", None) or 0
    inter = max(dense, experts * (getattr(config, "moe_intermediate_size", None) or 0))
    # Attention phase: residual, normed input, q, k, v, attention output (dtype) + fp32 RoPE copies of q and k and
    # their rotated halves (4 fp32 tensors). MLP phase: residual, normed input, gate, up, silu(gate), product.
    attention_phase = tokens * d * (6 * itemsize + 4 * 4)
    if attn_implementation == "eager":  # scores in dtype, fp32 softmax, cast back
        attention_phase += rows * config.num_attention_heads * seq_len * seq_len * (2 * itemsize + 4)
    mlp_phase = tokens * (2 * d + 4 * inter) * itemsize
    activation_bytes = max(attention_phase, mlp_phase)
    logits_bytes = rows * window * config.vocab_size * itemsize
    step_bytes = estimate_step_bytes(batch_size, seq_len, window, config.vocab_size, sampling, cfg)

    resolved = _resolve_device_map(model, device_map, max_memory)
    placement = expand_device_map(resolved, list(named))
    weights_per_device: dict[Device, int] = {}
    for name, param in named.items():
        device = placement[name]
        weights_per_device[device] = weights_per_device.get(device, 0) + param.numel() * itemsize

    # What accelerate's dispatch does: cpu/disk entries compute on the main device (the first accelerator in the
    # map, else the CPU); "cpu" entries are offloaded too when that is an accelerator.
    accelerators = [dev for dev in dict.fromkeys(resolved.values()) if str(dev) not in ("cpu", "disk")]
    main: Device = accelerators[0] if accelerators else "cpu"
    offloaded = ("disk",) if main == "cpu" else ("cpu", "disk")

    def runs_on(module: str) -> Device:  # a parameterless module (rotary_emb) left out of a map reads as "cpu"
        device = get_device(resolved, module)
        return main if str(device) in ("cpu", "disk") else device

    per_device = dict(weights_per_device)
    per_device.setdefault(main, 0)

    def add(device: Device, nbytes: int) -> None:
        per_device[device] = per_device.get(device, 0) + nbytes

    # accelerate hooks every leaf module of an offloaded entry: one Linear/Embedding is on the main device at a time.
    module_bytes = compute_module_sizes(model, dtype=dtype)
    buffers = compute_module_sizes(model, dtype=dtype, buffers_only=True)
    leaves = {name.rsplit(".", 1)[0] for name in named if str(placement[name]) in offloaded}
    streamed_bytes = max((module_bytes[leaf] - buffers.get(leaf, 0) for leaf in leaves), default=0)
    add(main, streamed_bytes)
    add(runs_on("model.rotary_emb"), buffer_bytes)
    for device in dict.fromkeys(runs_on(f"model.layers.{i}") for i in range(config.num_hidden_layers)):
        add(device, activation_bytes)
    head_device = runs_on("lm_head" if not config.tie_word_embeddings else "model.embed_tokens")
    add(head_device, logits_bytes)
    # generate() works on the embedding's device (the top-level hook returns the logits there): one step's working
    # set, the logits included; the head's device holds them too when it is another one.
    generate_device = runs_on("model.embed_tokens")
    if generate_device == head_device:
        per_device[head_device] -= logits_bytes
    add(generate_device, step_bytes)

    return MemoryEstimate(
        parameters=parameters,
        active_parameters=active_parameters(model, config),
        dtype=dtype,
        weight_bytes=parameters * itemsize,
        buffer_bytes=buffer_bytes,
        activation_bytes=activation_bytes,
        logits_bytes=logits_bytes,
        step_bytes=step_bytes,
        streamed_bytes=streamed_bytes,
        sequence_length=seq_len,
        window=window,
        device_map=None if device_map is None else resolved,
        weights_per_device=weights_per_device,
        per_device=per_device,
    )


def generation_step(generation_config, seq_len: int, cfg: bool = False, **request) -> tuple[int, int, bool]:
    """(canvas length, logits window, fp64 noise drawn) of a generate() request, from the parts the sampler is
    built from: the family's layout (`canvas_length`, `logits_width`) and proposal (`gumbel`), as generate() reads
    them for its pre-check. `request`: generation-config fields (max_new_tokens, block_length, fast, do_sample)."""
    config = copy.deepcopy(generation_config)
    config.update(**request, cfg_scale=1.0 if cfg else 0.0)
    parts = config.sampler_parts()
    prompt_len = seq_len - config.max_new_tokens
    length = parts.layout.canvas_length(prompt_len, config.max_new_tokens)
    return length, parts.layout.logits_width(prompt_len, length), bool(getattr(parts.proposal, "gumbel", False))


def check_memory_arguments(
    dtype: torch.dtype = torch.bfloat16,
    batch_size: int = 1,
    seq_len: int = 1024,
    max_memory: dict[Device, int | str] | None = None,
    attn_implementation: str = "sdpa",
) -> None:
    """`ValueError` / `TypeError` naming the argument: sizes are positive integers (a negative batch would print
    negative megabytes), `max_memory` sizes parse as accelerate reads them ("22GiB", "500MB", bytes)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for device, size in (max_memory or {}).items():
        parse_memory_size(size, f"max_memory[{device!r}]")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        choices = list(ATTN_IMPLEMENTATIONS)
        raise ValueError(f"attn_implementation must be one of {choices}, got {attn_implementation!r}")


def parse_memory_size(size: int | str, name: str = "max_memory") -> int:
    """Bytes of a size as accelerate reads `max_memory` ("22GiB", "500MB", an int of bytes); `ValueError` naming
    `name` when it is not one, or not positive."""
    from accelerate.utils import convert_file_size_to_int

    try:
        value = convert_file_size_to_int(size) if not isinstance(size, bool) else -1
    except (ValueError, TypeError, AttributeError):
        value = -1
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive size such as 22GiB, 500MB or a number of bytes, got {size!r}")
    return value


def plan_device_map(
    config: PreTrainedConfig,
    device_map: str = "auto",
    max_memory: dict[Device, int | str] | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, Device]:
    """The map `from_pretrained(path, device_map=device_map, max_memory=max_memory, dtype=dtype)` would build.

    Runs transformers' own map builder on a meta-device model, so no weights are needed; GPU indices in `max_memory`
    need not exist on this machine (transformers warns "Device N is not available").
    """
    return _plan(meta_model(config, dtype), device_map, max_memory)


def _plan(model: torch.nn.Module, device_map: str, max_memory: dict[Device, int | str] | None) -> dict[str, Device]:
    """transformers' map builder (accelerate's `infer_auto_device_map` with the model's `_no_split_modules` and the
    `max_memory` that `from_pretrained` derives) on a meta-device model."""
    from transformers.integrations.accelerate import _get_device_map

    return dict(_get_device_map(model, device_map, max_memory, None))


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `llada-hf memory` / `python -m llada_hf.memory`."""
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a hub config name (`llada_hf.hub.list_hub_configs()`, e.g. inclusionAI/LLaDA2.0-mini), a checkpoint "
        "folder or a config.json (default: GSAI-ML/LLaDA-8B-Instruct); only the config is read",
    )
    parser.add_argument("--config", help=argparse.SUPPRESS)  # the old spelling of MODEL
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="weight dtype")
    from .cli import nonneg_int, positive_int

    parser.add_argument("--batch-size", type=positive_int, default=1, help="rows per generate() call")
    parser.add_argument("--max-new-tokens", type=nonneg_int, default=1024, help="answer length (canvas)")
    parser.add_argument(
        "--prompt-length", type=nonneg_int, default=0, help="prompt tokens (each step runs prompt + canvas)"
    )
    parser.add_argument(
        "--seq-len", type=positive_int, default=None, help="prompt + canvas, instead of the two flags above"
    )
    parser.add_argument(
        "--device-map",
        default=None,
        choices=["auto", "balanced", "balanced_low_0", "sequential"],
        help="plan a placement as from_pretrained would (default: everything on one GPU)",
    )
    parser.add_argument(
        "--max-memory", nargs="*", default=[], type=max_memory_pair, help="DEVICE=SIZE pairs, e.g. 0=22GiB cpu=48GiB"
    )
    parser.add_argument("--do-sample", action="store_true", help="sampling (float64 Gumbel noise) instead of greedy")
    parser.add_argument("--cfg", action="store_true", help="classifier-free guidance (cfg_scale > 0)")
    parser.add_argument(
        "--block-length", type=positive_int, default=None, help="generate()'s block_length (default: the model's)"
    )
    parser.add_argument(
        "--fast", action=argparse.BooleanOptionalAction, default=None,
        help="generate()'s fast (logits of the block only; default: the model's, on); --no-fast: the whole canvas",
    )  # fmt: skip
    parser.add_argument(
        "--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS,
        help="eager materialises the (batch, heads, seq, seq) scores",
    )  # fmt: skip


def max_memory_pair(text: str) -> tuple[Device, str]:
    """A `--max-memory` pair DEVICE=SIZE (0=22GiB, cpu=48GiB, disk=1TB), checked when parsed."""
    device, sep, size = text.partition("=")
    if not sep or not (device.isdigit() or device in ("cpu", "disk", "mps")):
        raise argparse.ArgumentTypeError(f"expected DEVICE=SIZE with DEVICE a GPU index, cpu or disk (got {text!r})")
    try:
        parse_memory_size(size, device)
    except ValueError as error:
        message = f"{text!r}: the size must be like 22GiB, 500MB or a number of bytes"
        raise argparse.ArgumentTypeError(message) from error
    return (int(device) if device.isdigit() else device), size


def load_config(name_or_path: str) -> PreTrainedConfig:
    """A hub config name, a checkpoint folder or a config.json as its config class; `ModelLoadError` (one line)
    when there is none."""
    from transformers import AutoConfig

    from . import register
    from .hub import list_hub_configs, load_hub_config
    from .loading import ModelLoadError, looks_local

    if name_or_path in list_hub_configs():
        return load_hub_config(name_or_path)
    if looks_local(name_or_path) and not os.path.exists(name_or_path):
        raise ModelLoadError(f"no model or config at {name_or_path}")
    register()
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(f"no config for {name_or_path}: {first}") from error


def memory_estimate(args: argparse.Namespace) -> MemoryEstimate:
    """The estimate for parsed `add_memory_args` flags."""
    from .errors import UsageError

    max_memory = dict(args.max_memory)
    args.model = args.model or getattr(args, "config", None) or DEFAULT_MODEL
    seq_len = args.seq_len if args.seq_len is not None else args.prompt_length + args.max_new_tokens
    if seq_len < 1:
        raise UsageError("--prompt-length + --max-new-tokens must be at least 1 (nothing to run a forward over)")
    return estimate_memory(
        load_config(args.model),
        dtype=getattr(torch, args.dtype),
        device_map=args.device_map,
        batch_size=args.batch_size,
        seq_len=seq_len,
        max_memory=max_memory or None,
        do_sample=args.do_sample,
        cfg=args.cfg,
        attn_implementation=args.attn_implementation,
        max_new_tokens=None if args.seq_len is not None else args.max_new_tokens,
        block_length=args.block_length,
        fast=args.fast,
    )


def main(argv: list[str] | argparse.Namespace | None = None) -> int:
    """`llada-hf memory [MODEL] [--dtype --batch-size --max-new-tokens --device-map ...]`: print the table."""
    if not isinstance(argv, argparse.Namespace):  # one-line errors and exit codes as `llada-hf memory`
        import sys

        from .cli import main as cli_main

        return cli_main(["memory", *(sys.argv[1:] if argv is None else argv)])
    args = argv
    estimate = memory_estimate(args)
    print(f"{args.model}: batch {args.batch_size}, sequence {estimate.sequence_length} (prompt + canvas)")
    print(estimate.summary())
    if estimate.device_map is not None:
        print("device_map:", estimate.device_map)
    return 0


# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build parameters in `dtype` as `from_pretrained` does (the fp32 RoPE buffers stay fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _resolve_device_map(
    model: torch.nn.Module,
    device_map: str | dict[str, Device] | None,
    max_memory: dict[Device, int | str] | None,
) -> dict[str, Device]:
    """{"": 0} for no map, transformers' plan for a string, an explicit map once accelerate has checked that it
    places every parameter (`ValueError` naming the ones it does not)."""
    from accelerate.utils import check_device_map

    if device_map is None:
        return {"": 0}
    if isinstance(device_map, str):
        return _plan(model, device_map, max_memory)
    check_device_map(model, device_map)
    return dict(device_map)


__all__ = [
    "MemoryEstimate",
    "buffer_shapes",
    "count_parameters",
    "estimate_memory",
    "active_parameters",
    "add_memory_args",
    "check_memory_arguments",
    "max_memory_pair",
    "parse_memory_size",
    "load_config",
    "main",
    "memory_estimate",
    "meta_model",
    "parameter_shapes",
    "plan_device_map",
    "generation_step",
]

if __name__ == "__main__":
    raise SystemExit(main())
