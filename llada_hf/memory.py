"""Memory planning for LLaDA: weight bytes per device for a `device_map`, plus the transient memory of generation.

Why a helper: LLaDA has no KV cache, so one `generate()` step is a full forward over prompt + canvas, and its largest
transient is the (batch, seq, vocab) logits tensor and the sampler's work on it (126,464 columns for the 8B model), not
the layers' activations. `estimate_memory` says, before loading 16 GB, what each device has to hold.

The parameter count is analytic (shapes from the config, the names `LLaDAModelLM` uses), so it can be checked against
a meta-device model; string device maps ("auto", "balanced", ...) are resolved with the same transformers function
`from_pretrained` uses, on a meta-device model, so the planned map is the map a load with that `max_memory` produces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .modeling import LLaDAConfig

Device = int | str

# Bytes per element of the (batch, seq, vocab) logits that generate() keeps alive at its peak, beyond the logits
# themselves, by confidence rule (see `sampler_bytes_per_logit`).
_FLOAT64_SAMPLING_COPIES = 5  # logits64, uniform, exp(logits64), -log(uniform) and its power: live at once


def parameter_shapes(config: LLaDAConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of `LLaDAModelLM(config)`, from the config alone (no model is built).

    A tied head (`tie_word_embeddings`) shares the embedding and is not listed twice, as `model.parameters()` does.
    """
    d, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    q_out = config.num_attention_heads * config.head_dim
    kv_out = config.num_key_value_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (q_out, d)
        shapes[p + "self_attn.k_proj.weight"] = (kv_out, d)
        shapes[p + "self_attn.v_proj.weight"] = (kv_out, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, q_out)
        if config.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q_out,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_out,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_out,)
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, d)
        shapes[p + "mlp.up_proj.weight"] = (inter, d)
        shapes[p + "mlp.down_proj.weight"] = (d, inter)
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, d)
    return shapes


def buffer_shapes(config: LLaDAConfig) -> dict[str, tuple[int, ...]]:
    """The RoPE tables: non-persistent fp32 buffers (not in checkpoints; kept fp32 whatever the weights' dtype)."""
    table = (config.max_position_embeddings, config.head_dim)
    return {"model.rotary_emb.cos_cached": table, "model.rotary_emb.sin_cached": table}


def count_parameters(config: LLaDAConfig) -> int:
    """Number of parameters of `LLaDAModelLM(config)` (8,015,581,184 for the default, 8B config)."""
    return sum(_numel(shape) for shape in parameter_shapes(config).values())


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a LLaDA model needs; `per_device` is what to compare with each device's free memory.

    `per_device[d]` = the weights resident on `d` (for "cpu"/"disk" entries: stored there, computed on the main
    device) + on the devices that compute: the RoPE tables, the largest offloaded leaf module (streamed one at a time),
    the per-layer activation peak on every device that runs decoder layers, and the logits + sampler working set on
    the head's device and on the device generate() works on. CUDA context (~0.5 GB per GPU), allocator fragmentation
    and, for training, gradients, optimizer states and saved activations are not included.
    """

    parameters: int
    dtype: torch.dtype
    weight_bytes: int  # all parameters in `dtype`
    buffer_bytes: int  # RoPE tables, fp32, once per computing device that holds `model.rotary_emb`
    activation_bytes: int  # peak of live tensors inside one decoder layer's forward (no_grad)
    logits_bytes: int  # the head's (batch, seq, vocab) output in `dtype`
    sampler_bytes: int  # what generate() allocates on top of the logits in one step (softmax, Gumbel noise, ...)
    streamed_bytes: int  # the largest offloaded leaf module, onloaded to the main device during its forward
    device_map: dict[str, Device] | None = None
    weights_per_device: dict[Device, int] = field(default_factory=dict)
    per_device: dict[Device, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Sum over devices, "disk" included (an upper bound for one device holding everything when unsharded)."""
        return sum(self.per_device.values())

    def summary(self) -> str:
        """A short human-readable table (GB = 1e9 bytes)."""
        lines = [
            f"parameters: {self.parameters:,} ({self.weight_bytes / 1e9:.2f} GB in {str(self.dtype).split('.')[-1]})",
            f"per-layer activations: {self.activation_bytes / 1e6:.1f} MB, logits: {self.logits_bytes / 1e6:.1f} MB, "
            f"sampler: {self.sampler_bytes / 1e6:.1f} MB",
        ]
        for device, total in self.per_device.items():
            weights = self.weights_per_device.get(device, 0)
            lines.append(f"  {device!s:>6}: {total / 1e9:7.2f} GB (weights {weights / 1e9:.2f} GB)")
        return "\n".join(lines)


def sampler_bytes_per_logit(dtype: torch.dtype, do_sample: bool = False, remasking: str = "low_confidence") -> int:
    """Peak bytes generate() allocates per logit on top of the logits (see `DiffusionGenerationMixin.generate`).

    Greedy `low_confidence`: one softmax in the logits' dtype. `margin`/`entropy`: fp32 softmax/log-softmax working
    sets. Sampling (`do_sample=True`): the official Gumbel-max in float64 over the whole tensor, five float64 copies at
    its peak; the confidence is computed after those are freed, so the larger of the two counts.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    confidence = {"low_confidence": itemsize, "random": 0, "margin": 8, "entropy": 12}[remasking]
    sampling = 8 * _FLOAT64_SAMPLING_COPIES if do_sample else 0
    return max(confidence, sampling)


def estimate_memory(
    config: LLaDAConfig,
    dtype: torch.dtype = torch.bfloat16,
    device_map: str | dict[str, Device] | None = None,
    batch_size: int = 1,
    seq_len: int | None = None,
    max_memory: dict[Device, int | str] | None = None,
    do_sample: bool = False,
    remasking: str = "low_confidence",
    cfg: bool = False,
    attn_implementation: str = "sdpa",
) -> MemoryEstimate:
    """Estimate the memory of a LLaDA model and of one generation step, per device of `device_map`.

    Args:
        config: the model's config (`LLaDAConfig()` is LLaDA-8B).
        dtype: weight dtype (the checkpoints are bf16).
        device_map: `None` (everything on one device, reported as device 0), an explicit map
            `{module_name: device}` (devices: GPU index, "cpu", "disk"), or a string as accepted by `from_pretrained`
            ("auto", "balanced", "balanced_low_0", "sequential"), then resolved with `max_memory` exactly as
            `from_pretrained` would.
        batch_size: rows per generate() call (`num_return_sequences` multiplies it).
        seq_len: prompt + `max_new_tokens`: every step runs a full forward over it (no KV cache). Default: 1024.
        max_memory: per-device limits, only used to resolve a string `device_map`.
        do_sample / remasking / cfg: generate()'s options that change the step's working set (`cfg`: classifier-free
            guidance doubles the forward batch).
        attn_implementation: "eager" materializes (batch, heads, seq, seq) scores; sdpa/flash kernels do not.
    """
    seq_len = 1024 if seq_len is None else seq_len
    itemsize = torch.empty((), dtype=dtype).element_size()
    shapes = parameter_shapes(config)
    parameters = sum(_numel(s) for s in shapes.values())
    buffer_bytes = sum(_numel(s) for s in buffer_shapes(config).values()) * 4

    rows = batch_size * (2 if cfg else 1)  # rows per forward
    tokens = rows * seq_len
    d, inter = config.hidden_size, config.intermediate_size
    # Attention phase: residual, normed input, q, k, v, attention output (dtype) + fp32 RoPE copies of q and k and
    # their rotated halves (4 fp32 tensors). MLP phase: residual, normed input, gate, up, silu(gate), product.
    attention_phase = tokens * d * (6 * itemsize + 4 * 4)
    if attn_implementation == "eager":  # scores in dtype, fp32 softmax, cast back
        attention_phase += rows * config.num_attention_heads * seq_len * seq_len * (2 * itemsize + 4)
    mlp_phase = tokens * (2 * d + 4 * inter) * itemsize
    activation_bytes = max(attention_phase, mlp_phase)
    logits_bytes = tokens * config.vocab_size * itemsize
    # CFG combines the two halves into batch_size rows: uncond + (s + 1) * (cond - uncond), three such tensors.
    cfg_bytes = 3 * batch_size * seq_len * config.vocab_size * itemsize if cfg else 0
    sampler_bytes = (
        batch_size * seq_len * config.vocab_size * sampler_bytes_per_logit(dtype, do_sample, remasking) + cfg_bytes
    )

    resolved = _resolve_device_map(config, dtype, device_map, max_memory)
    placement = _place(shapes, resolved)
    weights_per_device: dict[Device, int] = {}
    for name, shape in shapes.items():
        device = placement[name]
        weights_per_device[device] = weights_per_device.get(device, 0) + _numel(shape) * itemsize

    # What accelerate's dispatch does: cpu/disk entries compute on the main device (the first accelerator in the
    # map, else the CPU); "cpu" entries are offloaded too when that is an accelerator.
    accelerators = [dev for dev in dict.fromkeys(resolved.values()) if dev not in ("cpu", "disk")]
    main: Device = accelerators[0] if accelerators else "cpu"
    offloaded = ("disk",) if main == "cpu" else ("cpu", "disk")

    def runs_on(module: str) -> Device:
        try:
            device = _lookup(resolved, module)
        except ValueError:  # a parameterless module (rotary_emb) left out of an explicit map
            return main
        return main if device in ("cpu", "disk") else device

    per_device = dict(weights_per_device)
    per_device.setdefault(main, 0)

    def add(device: Device, nbytes: int) -> None:
        per_device[device] = per_device.get(device, 0) + nbytes

    # accelerate hooks every leaf module of an offloaded entry: one Linear/Embedding is on the main device at a time.
    leaf_bytes: dict[str, int] = {}
    for name, shape in shapes.items():
        if placement[name] in offloaded:
            leaf = name.rsplit(".", 1)[0]
            leaf_bytes[leaf] = leaf_bytes.get(leaf, 0) + _numel(shape) * itemsize
    streamed_bytes = max(leaf_bytes.values(), default=0)
    add(main, streamed_bytes)
    add(runs_on("model.rotary_emb"), buffer_bytes)
    for device in dict.fromkeys(runs_on(f"model.layers.{i}") for i in range(config.num_hidden_layers)):
        add(device, activation_bytes)
    head_device = runs_on("lm_head" if not config.tie_word_embeddings else "model.embed_tokens")
    add(head_device, logits_bytes)
    # generate() works on the embedding's device (the top-level hook returns the logits there): a second copy of
    # the logits if that is another device, and the sampler's working set.
    generate_device = runs_on("model.embed_tokens")
    if generate_device != head_device:
        add(generate_device, logits_bytes)
    add(generate_device, sampler_bytes)

    return MemoryEstimate(
        parameters=parameters,
        dtype=dtype,
        weight_bytes=parameters * itemsize,
        buffer_bytes=buffer_bytes,
        activation_bytes=activation_bytes,
        logits_bytes=logits_bytes,
        sampler_bytes=sampler_bytes,
        streamed_bytes=streamed_bytes,
        device_map=None if device_map is None else resolved,
        weights_per_device=weights_per_device,
        per_device=per_device,
    )


def plan_device_map(
    config: LLaDAConfig,
    device_map: str = "auto",
    max_memory: dict[Device, int | str] | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, Device]:
    """The map `from_pretrained(path, device_map=device_map, max_memory=max_memory, dtype=dtype)` would build.

    Runs transformers' own map builder on a meta-device model, so no weights are needed; GPU indices in `max_memory`
    need not exist on this machine (transformers warns "Device N is not available").
    """
    from transformers.integrations.accelerate import _get_device_map

    from .modeling import LLaDAModelLM

    with torch.device("meta"), _default_dtype(dtype):
        model = LLaDAModelLM(config)
    return dict(_get_device_map(model, device_map, max_memory, None))


def main(argv: list[str] | None = None) -> None:
    """`python -m llada_hf.memory [--config DIR] [--device-map balanced --max-memory 0=22GiB 1=22GiB] ...`"""
    import argparse

    parser = argparse.ArgumentParser(description="Estimate LLaDA memory per device (default config: LLaDA-8B).")
    parser.add_argument("--config", help="a checkpoint directory or config.json (default: LLaDAConfig(), the 8B)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device-map", help='"auto", "balanced", "balanced_low_0" or "sequential" (default: one GPU)')
    parser.add_argument("--max-memory", nargs="*", default=[], help="DEVICE=SIZE pairs, e.g. 0=22GiB cpu=48GiB")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024, help="prompt + max_new_tokens")
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--cfg", action="store_true", help="classifier-free guidance (cfg_scale > 0)")
    args = parser.parse_args(argv)

    config = LLaDAConfig.from_pretrained(args.config) if args.config else LLaDAConfig()
    max_memory = {}
    for pair in args.max_memory:
        device, size = pair.split("=", 1)
        max_memory[int(device) if device.isdigit() else device] = size
    estimate = estimate_memory(
        config,
        dtype=getattr(torch, args.dtype),
        device_map=args.device_map,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        max_memory=max_memory or None,
        do_sample=args.do_sample,
        cfg=args.cfg,
    )
    print(estimate.summary())
    if estimate.device_map is not None:
        print("device_map:", estimate.device_map)


# ---------------------------------------------------------------------------------------------------------------------


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


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
    config: LLaDAConfig,
    dtype: torch.dtype,
    device_map: str | dict[str, Device] | None,
    max_memory: dict[Device, int | str] | None,
) -> dict[str, Device]:
    if device_map is None:
        return {"": 0}
    if isinstance(device_map, str):
        return plan_device_map(config, device_map, max_memory, dtype)
    return {key: _normalize_device(value) for key, value in device_map.items()}


def _normalize_device(device: Device | torch.device) -> Device:
    """0, "cuda:0", torch.device("cuda", 0) -> 0; "cpu", "disk" unchanged (accelerate's spelling)."""
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, str) and device.startswith("cuda"):
        return int(device.split(":")[1]) if ":" in device else 0
    return device


def _match(device_map: dict[str, Device], name: str) -> str:
    """The most specific key of `device_map` that is `name` or one of its parent modules ("" matches all)."""
    best = None
    for key in device_map:
        if key == "" or name == key or name.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    if best is None:
        raise ValueError(f"device_map does not place {name!r}: add an entry for it or one of its parent modules.")
    return best


def _lookup(device_map: dict[str, Device], name: str) -> Device:
    return device_map[_match(device_map, name)]


def _place(shapes: dict[str, tuple[int, ...]], device_map: dict[str, Device]) -> dict[str, Device]:
    return {name: _lookup(device_map, name) for name in shapes}


__all__ = [
    "MemoryEstimate",
    "buffer_shapes",
    "count_parameters",
    "estimate_memory",
    "main",
    "parameter_shapes",
    "plan_device_map",
    "sampler_bytes_per_logit",
]

if __name__ == "__main__":
    main()
