"""Sharded inference: accelerate device maps with CPU/disk offload, tensor parallel, and the memory estimate.

CPU-only by default. Offloaded models must give the plain model's logits and generate() tokens; the 2-process TP
test runs `scripts/tp_check.py` under torchrun (gloo). GPU variants are marked `gpu` and skip without CUDA.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_DIR, forward_depth, fp32_tol, tiny_config, tiny_model
from transformers import AutoModel

from llada_hf import LLaDAConfig, LLaDAModelLM, memory
from llada_hf.memory import (
    buffer_shapes,
    count_parameters,
    estimate_memory,
    parameter_shapes,
    plan_device_map,
)

REPO = Path(__file__).resolve().parents[1]
N_LAYERS = 4
GEN = dict(max_new_tokens=8, steps=4, block_length=4)
# Published: the official LLaDA-8B safetensors index (total_size 16,031,162,368 bytes in bf16).
LLADA_8B_PARAMETERS = 8_015_581_184

# Every parameter placement kind at once: layers alternate cpu/disk, the head on disk.
MIXED_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "disk",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}
# The embedding on disk: its weight is on the meta device, so generate() cannot take its device from it.
EMBED_ON_DISK_MAP = {
    "model.embed_tokens": "disk",
    "model.layers.0": "disk",
    "model.layers.1": "cpu",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, LLaDAModelLM]:
    """A 4-layer tiny model saved to disk, and the plain in-memory model it came from."""
    model = tiny_model(seed=3, num_hidden_layers=N_LAYERS)
    path = tmp_path_factory.mktemp("tiny_sharding")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, the second left-padded, so the padding-mask path runs through the hooks too."""
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 1000, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 1001, 0
    return ids, mask


def _load(path: Path, offload: Path, **kwargs) -> LLaDAModelLM:
    return LLaDAModelLM.from_pretrained(path, offload_folder=offload, **kwargs).eval()


def _assert_same_outputs(sharded: LLaDAModelLM, plain: LLaDAModelLM, ids: torch.Tensor, mask: torch.Tensor):
    """Logits within 1e-6 and identical greedy tokens; `plain` gets the inputs on its own device."""
    plain_device = plain.get_input_embeddings().weight.device
    with torch.no_grad():
        expected = plain(ids.to(plain_device), attention_mask=mask.to(plain_device)).logits.cpu()
        got = sharded(ids, attention_mask=mask).logits
    assert got.device == ids.device  # accelerate's top-level hook returns outputs where the inputs were
    assert (got.cpu() - expected).abs().max().item() <= fp32_tol(expected, forward_depth(plain.config, ids.shape[1]))
    expected_tokens = plain.generate(ids, attention_mask=mask, **GEN).cpu()
    tokens = sharded.generate(ids, attention_mask=mask, **GEN).cpu()
    assert torch.equal(tokens, expected_tokens)
    assert (tokens[:, ids.shape[1] :] != plain.config.mask_token_id).all()  # a real generation, not an empty canvas


def _offloaded(model: LLaDAModelLM) -> set[str]:
    return {name for name, p in model.named_parameters() if p.device.type == "meta"}


# ---------------------------------------------------------------------------------------------------------------------
# device_map / offload on CPU


def test_mixed_cpu_disk_map_matches_plain_model(saved, inputs, tmp_path):
    path, plain = saved
    model = _load(path, tmp_path, device_map=MIXED_MAP)
    assert model.hf_device_map == MIXED_MAP
    disk_modules = tuple(k + "." for k, v in MIXED_MAP.items() if v == "disk")
    assert _offloaded(model) == {n for n, _ in model.named_parameters() if n.startswith(disk_modules)}
    _assert_same_outputs(model, plain, *inputs)


def test_max_memory_forces_a_cpu_disk_split(saved, inputs, tmp_path):
    """A CPU budget below the model's size: accelerate keeps what fits on the CPU and offloads the rest to disk."""
    path, plain = saved
    weight_bytes = estimate_memory(plain.config, dtype=torch.float32).weight_bytes
    budget = int(weight_bytes * 0.75)
    model = _load(path, tmp_path, device_map="auto", max_memory={"cpu": budget})
    layer_devices = {v for k, v in model.hf_device_map.items() if k.startswith("model.layers")}
    assert layer_devices == {"cpu", "disk"}  # the budget splits the stack of layers itself
    assert _offloaded(model)  # some weights really left memory
    assert sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta") <= budget
    _assert_same_outputs(model, plain, *inputs)
    # The whole model on disk (budget smaller than the embedding) works too.
    all_disk = _load(path, tmp_path / "all", device_map="auto", max_memory={"cpu": "1KB"})
    assert set(all_disk.hf_device_map.values()) == {"disk"}
    _assert_same_outputs(all_disk, plain, *inputs)


def test_embedding_on_disk_generates_on_the_input_device(saved, inputs, tmp_path):
    """model.embed_tokens on "disk" -> its weight (and `model.device`) is meta; generate() must still work."""
    path, plain = saved
    model = _load(path, tmp_path, device_map=EMBED_ON_DISK_MAP)
    assert model.get_input_embeddings().weight.device.type == "meta"
    _assert_same_outputs(model, plain, *inputs)
    # Sampling with a seeded generator consumes the same random numbers as the plain model.
    ids, mask = inputs
    kwargs = dict(GEN, do_sample=True, temperature=1.0)
    expected = plain.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(5), **kwargs)
    got = model.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(got, expected)


def test_offloaded_official_checkpoint_reproduces_golden_tokens(golden_cases, tmp_path):
    """The official-format golden checkpoint (renamed keys, read in place from its safetensors) with the embedding
    and a layer on disk reproduces the official sampler's tokens, seeded cases included."""
    device_map = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                  "lm_head": "disk"}  # fmt: skip
    model = AutoModel.from_pretrained(GOLDEN_DIR, device_map=device_map, offload_folder=tmp_path).eval()
    assert _offloaded(model)
    for case in golden_cases["generate"]:
        if case["seed"] is not None:
            torch.manual_seed(case["seed"])
        kwargs = dict(case["kwargs"])
        kwargs["max_new_tokens"] = kwargs.pop("gen_length")
        assert model.generate(torch.tensor(case["prompt"]), **kwargs).tolist() == case["expected"], case["name"]
    assert not any(f.suffix == ".safetensors" for f in tmp_path.iterdir())  # nothing re-saved: read in place


def test_bf16_offload_matches_bf16_model(saved, inputs, tmp_path):
    """bf16 weights streamed from an fp32 checkpoint on disk are cast exactly like an in-memory bf16 load."""
    path, _ = saved
    plain = LLaDAModelLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    model = _load(path, tmp_path, device_map=MIXED_MAP, dtype=torch.bfloat16)
    ids, mask = inputs
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits)
    assert torch.equal(
        model.generate(ids, attention_mask=mask, **GEN), plain.generate(ids, attention_mask=mask, **GEN)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Memory estimate


def test_8b_parameter_count_and_bytes_match_a_meta_model():
    config = LLaDAConfig()  # the defaults are the LLaDA-8B geometry
    with torch.device("meta"):
        model = LLaDAModelLM(config)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == LLADA_8B_PARAMETERS
    assert count_parameters(config) == counted
    assert parameter_shapes(config) == {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert buffer_shapes(config) == {n: tuple(b.shape) for n, b in model.named_buffers()}
    estimate = estimate_memory(config, dtype=torch.bfloat16)
    bf16_bytes = torch.empty((), dtype=torch.bfloat16).element_size()
    assert estimate.weight_bytes == counted * bf16_bytes == 16_031_162_368
    assert estimate.weights_per_device == {0: estimate.weight_bytes}


@pytest.mark.parametrize(
    "overrides", [{"attention_bias": True}, {"tie_word_embeddings": True}, {"num_key_value_heads": 2}]
)
def test_parameter_shapes_follow_config_variants(overrides):
    config = tiny_config(**overrides)
    with torch.device("meta"):
        model = LLaDAModelLM(config)
    assert parameter_shapes(config) == {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())


def test_weights_per_device_match_a_real_dispatch(saved, tmp_path):
    """The estimate's cpu/disk split equals what from_pretrained actually kept in memory and left on disk."""
    path, _ = saved
    model = _load(path, tmp_path, device_map=MIXED_MAP, dtype=torch.bfloat16)
    in_memory = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
    on_disk = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "meta")
    estimate = estimate_memory(model.config, dtype=torch.bfloat16, device_map=MIXED_MAP)
    assert estimate.weights_per_device == {"cpu": in_memory, "disk": on_disk}
    # The CPU computes (no accelerator) and streams in one disk-offloaded leaf module at a time: the largest one.
    largest_leaf = max(
        sum(p.numel() * p.element_size() for p in module.parameters(recurse=False) if p.device.type == "meta")
        for module in model.modules()
    )
    assert estimate.streamed_bytes == largest_leaf
    transients = estimate.buffer_bytes + estimate.activation_bytes + estimate.step_bytes  # one step holds the logits
    assert estimate.per_device["cpu"] == in_memory + largest_leaf + transients


def test_planned_auto_map_is_the_map_from_pretrained_builds(saved, tmp_path):
    path, plain = saved
    budget = int(estimate_memory(plain.config, dtype=torch.float32).weight_bytes * 0.75)
    planned = plan_device_map(plain.config, "auto", {"cpu": budget}, dtype=torch.float32)
    loaded = _load(path, tmp_path, device_map="auto", max_memory={"cpu": budget}, dtype=torch.float32)
    assert planned == loaded.hf_device_map
    assert set(planned.values()) == {"cpu", "disk"}


def test_planned_multi_gpu_maps_balance_the_8b_model():
    """GPU indices in max_memory need not exist here: the plan is what a 2-GPU machine would load."""
    config = LLaDAConfig()
    estimate = estimate_memory(config, device_map="balanced", max_memory={0: "40GiB", 1: "40GiB"}, seq_len=320)
    assert set(estimate.weights_per_device) == {0, 1}
    assert sum(estimate.weights_per_device.values()) == estimate.weight_bytes
    share = estimate.weights_per_device[0] / estimate.weight_bytes
    assert 0.4 < share < 0.6
    # One 8 GiB GPU + 4 GiB CPU: the rest goes to disk and GPU 0 keeps room for the largest streamed module and a
    # step of blocks of 32 (a 320-column step's logits alone would not fit: accelerate's plan does not see them).
    tight = estimate_memory(
        config, device_map="auto", max_memory={0: "8GiB", "cpu": "4GiB"}, seq_len=320, block_length=32
    )
    assert set(tight.weights_per_device) == {0, "cpu", "disk"}
    assert tight.weights_per_device[0] <= 8 * 2**30 and tight.weights_per_device["cpu"] <= 4 * 2**30
    assert tight.per_device[0] <= 8 * 2**30


def test_logits_estimate_matches_a_forward():
    """The logits are those of the columns a step scores: the block under `fast` (the model's default), else the
    whole canvas; classifier-free guidance doubles the forward batch."""
    model = tiny_model()
    batch, prompt, new = 3, 5, 16
    ids = torch.randint(0, 1000, (batch, prompt + new))
    size = dict(dtype=torch.float32, batch_size=batch, seq_len=prompt + new, max_new_tokens=new)
    with torch.no_grad():
        for kwargs, kept in (({}, new), ({"block_length": 4}, 4), ({"fast": False, "block_length": 4}, 0)):
            logits = model(ids, logits_to_keep=slice(prompt + new - kept, None) if kept else None).logits
            estimate = estimate_memory(model.config, **size, **kwargs)
            assert estimate.logits_bytes == logits.numel() * logits.element_size(), kwargs
    cfg = estimate_memory(model.config, **size, cfg=True)
    assert cfg.logits_bytes == 2 * estimate_memory(model.config, **size).logits_bytes


@pytest.mark.parametrize(
    ("family", "request_"),
    [
        ("llada", {}),
        ("llada", {"block_length": 4, "steps": 4}),
        ("llada", {"fast": False}),
        ("llada", {"do_sample": True, "temperature": 1.0}),
        ("llada", {"cfg_scale": 1.0, "block_length": 8, "steps": 8}),
        ("llada2", {}),
        ("llada2", {"block_length": 8, "steps": 2}),
    ],
)
def test_memory_step_is_generates_precheck(family, request_, monkeypatch):
    """`estimate_memory`'s step figure is the one generate() checks before it allocates, for the same request: the
    call generate() makes is recorded, and memory.py must reach the same arguments (window, rows, sampling, CFG) from
    the request as `llada-hf memory` describes it."""
    import llada_hf.generation

    real, calls = llada_hf.generation.estimate_step_bytes, []

    def recording(*args):
        calls.append((args, real(*args)))
        return calls[-1][1]

    for name, module in list(sys.modules.items()):  # wherever generate() looks the name up
        if name.startswith("llada_hf.generation") and getattr(module, "estimate_step_bytes", None) is real:
            monkeypatch.setattr(module, "estimate_step_bytes", recording)
    if family == "llada":
        model = tiny_model()
    else:
        model = AutoModel.from_pretrained(REPO / "tests" / "fixtures" / "llada2_tiny").eval()
    batch, prompt, new = 2, 5, 16
    with torch.no_grad():
        model.generate(torch.randint(0, 1000, (batch, prompt)), max_new_tokens=new, **request_)
    (args, figure), *_ = calls
    estimate = estimate_memory(
        model.config, batch_size=batch, seq_len=prompt + new, max_new_tokens=new,
        block_length=request_.get("block_length"), fast=request_.get("fast"),
        do_sample=request_.get("do_sample", False), cfg=request_.get("cfg_scale", 0) > 0,
    )  # fmt: skip
    assert estimate.window == args[2]
    assert estimate.step_bytes == figure


def test_memory_cli_reads_an_official_config(golden_model, capsys):
    memory.main(["--config", str(GOLDEN_DIR), "--dtype", "float32", "--seq-len", "40"])
    out = capsys.readouterr().out
    assert f"parameters: {sum(p.numel() for p in golden_model.parameters()):,} " in out


def test_explicit_map_must_place_every_parameter():
    with pytest.raises(ValueError, match="lm_head"):
        estimate_memory(tiny_config(), device_map={"model": 0})


# ---------------------------------------------------------------------------------------------------------------------
# Tensor parallel


def _torchrun(nproc: int, model_dir: Path, out_dir: Path, *extra: str, timeout: int = 180) -> list[dict]:
    """Run scripts/tp_check.py on `nproc` ranks; on a hang, kill the whole process group (ranks included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(REPO / "scripts" / "tp_check.py"), str(model_dir), str(out_dir), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout}s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-6000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(nproc)]


def _check_tp_results(results: list[dict], model: LLaDAModelLM, world: int, key: str = "distributed_config"):
    plan = {**{f"model.{k}": v for k, v in model.config.base_model_tp_plan.items()}, **model._tp_plan}
    for rank, result in enumerate(results):
        assert result["rank"] == rank and result["tp_size"] == world
        sharding = result["sharding"]
        for name, info in sharding.items():
            rule = next((v for k, v in plan.items() if _matches(k, name)), None)
            shape, local = info["global_shape"], info["local_shape"]
            if rule in ("colwise", "colwise_gather_output", "embedding_rowwise"):
                assert local == [shape[0] // world, *shape[1:]], name
            elif rule == "rowwise":
                assert local == [shape[0], shape[1] // world], name
            else:
                assert local == shape, name  # norms: replicated
        comparison = result[key]
        assert comparison["logits_type"] == "Tensor"  # gathered, not a DTensor
        assert comparison["logits_shape"] == comparison["expected_logits_shape"]
        tol = fp32_tol(comparison["max_abs_reference_logits"], forward_depth(model.config, 16))  # all-reduce order
        assert comparison["max_abs_logits_diff"] <= tol
        assert comparison["max_abs_logits_diff_padded"] <= tol
        assert comparison["generate_equal"], (comparison["generated"], comparison["reference_generated"])
    assert results[0][key]["generated"] == results[1][key]["generated"]
    if key == "distributed_config":  # one training step: same loss, gathered gradients equal the unsharded ones
        for result in results:
            training = result["training"]
            depth = 2 * forward_depth(model.config, 16, vocab=True)  # forward + backward
            assert abs(training["loss"] - training["reference_loss"]) <= fp32_tol(training["reference_loss"], depth)
            assert training["max_abs_grad_diff"] <= fp32_tol(training["max_abs_reference_grad"], depth)


def _matches(pattern: str, name: str) -> bool:
    parts, names = pattern.split("."), name.split(".")[: len(pattern.split("."))]
    return len(names) == len(parts) and all(p in ("*", n) for p, n in zip(parts, names))


def test_tensor_parallel_two_cpu_processes(saved, tmp_path):
    """torchrun --nproc_per_node 2, gloo: weights halved; logits, greedy tokens, loss and grads as one process."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    path, model = saved
    results = _torchrun(2, path, tmp_path / "out", "--also-tp-plan-auto")
    assert results[0]["backend"] == "gloo"
    _check_tp_results(results, model, world=2)
    _check_tp_results(results, model, world=2, key="tp_plan_auto")
    sharded_expected = 7 * N_LAYERS + 2  # 7 projections per layer, the embedding and the head
    assert all(r["tp_plan_auto_sharded"] == sharded_expected for r in results)
    sharded = sum(r["local_shape"] != r["global_shape"] for r in results[0]["sharding"].values())
    assert sharded == sharded_expected


# ---------------------------------------------------------------------------------------------------------------------
# GPU (skipped here; run with `pytest -m gpu tests/test_sharding.py` on a CUDA machine)

requires_gpus = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@requires_gpus
def test_gpu_cpu_offloaded_embedding_matches_plain(saved, inputs, tmp_path):
    """With a GPU the "cpu" entries are offloaded too (weights on meta, streamed to cuda:0 per forward)."""
    path, _ = saved
    plain = LLaDAModelLM.from_pretrained(path, device_map={"": 0}).eval()
    device_map = {**{k: 0 for k in MIXED_MAP}, "model.embed_tokens": "cpu", "model.layers.1": "cpu",
                  "model.layers.3": "disk"}  # fmt: skip
    model = _load(path, tmp_path, device_map=device_map)
    assert model.get_input_embeddings().weight.device.type == "meta"
    for device in ("cpu", "cuda:0"):  # prompts given on the CPU or on the GPU
        ids, mask = (t.to(device) for t in inputs)
        _assert_same_outputs(model, plain, ids, mask)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_layer_split_matches_one_gpu(saved, inputs):
    """Layers split over two GPUs: activations hop cuda:0 -> cuda:1, logits come back to the inputs' device."""
    path, _ = saved
    plain = LLaDAModelLM.from_pretrained(path, device_map={"": 0}).eval()
    device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1,
                  "model.layers.3": 1, "model.norm": 1, "model.rotary_emb": 0, "lm_head": 1}  # fmt: skip
    model = LLaDAModelLM.from_pretrained(path, device_map=device_map).eval()
    assert model.hf_device_map == device_map
    ids, mask = (t.to(0) for t in inputs)
    _assert_same_outputs(model, plain, ids, mask)
    # What estimate_memory plans for this map: the weights per GPU as loaded.
    loaded = {0: 0, 1: 0}
    for param in model.parameters():
        loaded[param.device.index] += param.numel() * param.element_size()
    assert estimate_memory(model.config, dtype=torch.float32, device_map=device_map).weights_per_device == loaded


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tensor_parallel_two_gpus(saved, tmp_path):
    path, model = saved
    results = _torchrun(2, path, tmp_path / "out")
    assert "nccl" in results[0]["backend"] and results[1]["device"] == "cuda:1"
    _check_tp_results(results, model, world=2)


@pytest.mark.gpu
@requires_gpus
def test_gpu_peak_memory_within_estimate(tmp_path):
    """One bf16 generate() step of a mid-size model: measured peak above the weights vs the estimate's transients."""
    config = tiny_config(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, max_position_embeddings=1024)  # fmt: skip
    torch.manual_seed(0)
    model = LLaDAModelLM(config).to(device=0, dtype=torch.bfloat16).eval()
    batch, prompt, new = 4, 64, 192
    estimate = estimate_memory(config, dtype=torch.bfloat16, batch_size=batch, seq_len=prompt + new)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(0)
    torch.cuda.reset_peak_memory_stats(0)
    model.generate(torch.randint(0, 1000, (batch, prompt), device=0), max_new_tokens=new, steps=2, block_length=new)
    transient = torch.cuda.max_memory_allocated(0) - base
    predicted = estimate.per_device[0] - estimate.weight_bytes
    assert 0.5 * predicted <= transient <= 1.5 * predicted, (transient, predicted)
