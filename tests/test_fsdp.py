"""FSDP2 on CPU: 2 torchrun processes (gloo) with the weights sharded at load time train like 1 process, full weights
and LoRA, through the library (`scripts/train_ddp_check.py --fsdp`) and the command line (`--fsdp_size 2`); the
Trainer's own `--fsdp`, which would silently run plain DDP on CPU, is refused."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import forward_depth, fp32_tol, tiny_config

datasets = pytest.importorskip("datasets")
pytest.importorskip("peft")
from safetensors.torch import load_file  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from llada_hf.training import (  # noqa: E402
    FSDP_MIN_TRANSFORMERS,
    ModelArguments,
    ParallelismError,
    _distributed_config,
    train_main,
)

REPO = Path(__file__).resolve().parents[1]
LR, STEPS = 1e-3, 3  # both runs below: scripts/train_ddp_check.py's and `_cli`'s learning rate and steps


def trained_tolerance(weights: torch.Tensor) -> float:
    """Sharded vs single-process weights after STEPS AdamW steps from the same start: only the order of the float32
    sums differs (all-reduce, shards). Adam moves an element by at most about LR per step, so the updates (at most
    STEPS * LR) differ by the rounding of STEPS forward + backward chains (`forward_depth`); each step's write also
    rounds the weight itself (eps * |w| per step)."""
    depth = STEPS * 2 * forward_depth(tiny_config(), vocab=True)
    return fp32_tol(STEPS * LR, depth) + fp32_tol(weights, STEPS)


if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
import transformers  # noqa: E402
from packaging.version import Version  # noqa: E402

needs_native_fsdp = pytest.mark.skipif(
    Version(transformers.__version__) < Version(FSDP_MIN_TRANSFORMERS),
    reason=f"Trainer support for models sharded at load time needs transformers>={FSDP_MIN_TRANSFORMERS}",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _script():
    spec = importlib.util.spec_from_file_location("train_ddp_check", REPO / "scripts" / "train_ddp_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchrun(tmp_path, *args: str) -> None:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "datasets_cache"),
    )  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@needs_native_fsdp
def test_fsdp_two_processes_equal_single_process_full_and_lora(tmp_path):
    out = tmp_path / "fsdp.pt"
    _torchrun(
        tmp_path, str(REPO / "scripts" / "train_ddp_check.py"), "--out", str(out), "--per-device-batch", "2",
        "--steps", str(STEPS), "--fsdp", "--runs", "full", "lora",
    )  # fmt: skip
    sharded = torch.load(out)
    assert "--fsdp_size" in sharded["fsdp_trap"] and "plain DDP" in sharded["fsdp_trap"]
    script = _script()
    for run in ("full", "lora"):
        records: list = []
        single = script.train(per_device_batch=4, steps=STEPS, lora=run == "lora", record=records)
        assert all(record["dtensor_params"] == 0 for record in records)  # the single process is not sharded
        initial = script.build_model(lora=run == "lora").state_dict()
        distributed = sharded[run]["state"]
        assert distributed.keys() == single.keys() == initial.keys()
        moved = max((single[k] - initial[k]).abs().max().item() for k in single)
        assert moved > 100 * trained_tolerance(torch.zeros(())), run  # training changed the weights ...
        for name, value in single.items():  # ... and the sharded run changed them identically (fp32 tolerance)
            assert torch.allclose(distributed[name], value, rtol=0, atol=trained_tolerance(value)), (run, name)
        # every step ran with the weights sharded: each rank held half of every base weight as a DTensor
        steps = sharded[run]["sharding"]
        assert [record["step"] for record in steps] == [1, 2, 3]
        for record in steps:
            assert record["dtensor_params"] == 21 and record["local_fraction"] == pytest.approx(0.5, abs=0.01)
            if run == "full":
                assert record["plain_params"] == 0 and record["dtensor_trainable"] == 21
            else:  # adapters added after sharding stay replicated (the Trainer keeps them equal); the base is frozen
                assert record["dtensor_trainable"] == 0 and record["plain_params"] == 28
                assert len(record["plain_trainable"]) == 28 and all(".lora_" in n for n in record["plain_trainable"])
        if run == "lora":
            frozen = [name for name in initial if ".lora_" not in name]
            assert all(torch.equal(distributed[name], initial[name]) for name in frozen)


def _rows_file(tmp_path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _script().toy_rows(40)))
    return path


def _cli(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "tiny", "--train_file", str(data), "--eval_size", "8", "--output_dir", str(out),
        "--max_steps", str(STEPS), "--learning_rate", str(LR), "--use_cpu", "--report_to", "none",
        "--disable_tqdm", "true", "--logging_steps", "1", "--max_length", "12", "--pad_to_max_length", *extra,
    ]  # fmt: skip


@needs_native_fsdp
@pytest.mark.parametrize("variant", ["lora", pytest.param("full", marks=pytest.mark.slow)])
def test_cli_fsdp_size_2_equals_one_process(tmp_path, variant, monkeypatch):
    """`torchrun --nproc_per_node 2 -m llada_hf.training --fsdp_size 2` against the same command in one process:
    same eval loss and saved weights; checkpoints with `--save_only_model`; LoRA saves the adapter and merges it."""
    data = _rows_file(tmp_path)
    extra = ["--use_peft", "--lora_r", "4"] if variant == "lora" else []
    saving = ["--save_strategy", "steps", "--save_steps", "2", "--save_only_model"]  # (without: refused)
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    _torchrun(
        tmp_path, "-m", "llada_hf.training", *_cli(data, sharded, *extra, *saving), "--per_device_train_batch_size",
        "2", "--ddp_backend", "gloo", "--fsdp_size", "2",
    )  # fmt: skip
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    argv = [*_cli(data, single, *extra), "--save_strategy", "no", "--per_device_train_batch_size", "4"]
    assert train_main(argv) == 0
    files = ["model.safetensors"] + (["adapter/adapter_model.safetensors"] if variant == "lora" else [])
    for name in files:
        a, b = load_file(sharded / name), load_file(single / name)
        assert a.keys() == b.keys(), name
        assert all((a[k] - b[k]).abs().max().item() <= trained_tolerance(b[k]) for k in a), name
    eval_loss = [json.loads((d / "eval_results.json").read_text())["eval_loss"] for d in (sharded, single)]
    assert eval_loss[0] == pytest.approx(eval_loss[1], rel=1e-5)
    assert "distributed_config" not in json.loads((sharded / "config.json").read_text())
    checkpoint = "adapter_model.safetensors" if variant == "lora" else "model.safetensors"
    assert (sharded / "checkpoint-2" / checkpoint).is_file()


def test_cli_refuses_fsdp_that_would_not_shard(tmp_path, capsys, monkeypatch):
    data = _rows_file(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    base = [*_cli(data, tmp_path / "out"), "--save_strategy", "no"]
    # The Trainer's --fsdp on CPU would run plain DDP: refused, pointing to --fsdp_size
    assert train_main([*base, "--fsdp", "full_shard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plain DDP" in err[0] and "--fsdp_size N" in err[0]
    # --fsdp_size without that many processes
    assert train_main([*base, "--fsdp_size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "WORLD_SIZE is 1" in err[0]
    # checkpoints of a sharded model cannot hold the optimizer: say so before loading anything
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    monkeypatch.setenv("WORLD_SIZE", "2")  # what fsdp_config checks (after the arguments set up their devices)
    if Version(transformers.__version__) >= Version(FSDP_MIN_TRANSFORMERS):
        with pytest.raises(ParallelismError, match="--save_only_model"):
            _distributed_config(ModelArguments(fsdp_size=2), args)
        args.save_strategy = "no"
        assert _distributed_config(ModelArguments(fsdp_size=2), args).fsdp_size == 2
        with pytest.raises(ParallelismError, match="4bit"):
            _distributed_config(ModelArguments(fsdp_size=2, load_in_4bit=True), args)
