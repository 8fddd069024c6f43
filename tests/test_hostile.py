"""Hostile inputs, as a new user would try them: each case asserts the error type and that the message names the
argument (or, for the command line, one line on stderr, the exit code and an untouched output folder).

Sections: library entry points (likelihood, config loading, memory, generation), data and training, lm-eval, export,
command line. Each section keeps its own parametrised cases.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`llada-hf ARGS` in a subprocess (offline); returns the completed process with text stdout/stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "llada_hf.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *names: str) -> str:
    """The run failed with `code`, printed exactly one line on stderr (no traceback) naming each of `names`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def folder_state(path: Path) -> dict[str, float]:
    """Every file under `path` with its modification time (an empty dict for a missing folder)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


# =====================================================================================================================
# Library entry points: likelihood, config and hub-config loading, memory, generation (logits processors, masks).
# =====================================================================================================================


# =====================================================================================================================
# Data rows and training (llada_hf.training): row validation, `llada-hf train` flags.
# =====================================================================================================================


# =====================================================================================================================
# lm-eval backend settings.
# =====================================================================================================================

NO_MODEL = "/nonexistent/llada-model"  # a check that ran after HFLM's loading would fail with OSError instead
LM_EVAL_SETTINGS = [
    ({"mc_num": 0}, ["mc_num"]),  # was ZeroDivisionError (gcd(0, 32)) after loading the model
    ({"mc_num": -3}, ["mc_num"]),
    ({"mc_num": 2.5}, ["mc_num"]),
    ({"mc_batch_size": 0}, ["mc_batch_size"]),
    ({"mc_num": 10, "mc_batch_size": 4}, ["mc_num", "mc_batch_size"]),
    ({"cfg": -1}, ["cfg"]),
    ({"cfg": float("nan")}, ["cfg"]),
    ({"cfg_scale": -0.5}, ["cfg_scale"]),
    ({"temperature": -1}, ["temperature"]),  # was greedy, silently
    ({"temperature": float("inf")}, ["temperature"]),
    ({"steps": 0}, ["steps"]),
    ({"block_length": -8}, ["block_length"]),
    ({"gen_length": 0}, ["gen_length"]),
    ({"max_new_tokens": "many"}, ["max_new_tokens"]),
    ({"batch_size": 0}, ["batch_size"]),
    ({"max_batch_size": 0}, ["max_batch_size"]),
    ({"seed": -1}, ["seed"]),
    ({"seed": True}, ["seed"]),
    ({"method": "nope"}, ["method"]),
    ({"preset": "nope"}, ["preset"]),
]


@pytest.mark.parametrize(("settings", "names"), LM_EVAL_SETTINGS, ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_lm_eval_settings_are_checked_before_loading(settings, names):
    pytest.importorskip("lm_eval")
    from llada_hf.errors import UsageError
    from llada_hf.lm_eval_backend import LLaDAEvalHarness

    with pytest.raises(UsageError) as error:
        LLaDAEvalHarness(pretrained=NO_MODEL, device="cpu", **settings)
    for name in names:
        assert name in str(error.value)


LM_EVAL_CLI = [
    (["--model_args", f"pretrained={NO_MODEL}"], [NO_MODEL]),
    (["--model_args", f"pretrained={NO_MODEL}/", "--batch_size", "2"], [NO_MODEL]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base,mc_num=0"], ["mc_num"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base,temperature=-1"], ["temperature"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base", "--batch_size", "0"], ["batch_size"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base", "--device", "cuda"], ["--device", "CUDA"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base,device=cuda:0"], ["device", "CUDA"]),
]


@pytest.mark.parametrize(("argv", "names"), LM_EVAL_CLI, ids=lambda v: " ".join(v) if v and v[0] == "--" else "")
def test_lm_eval_main_checks_before_lm_eval_works(argv, names, monkeypatch):
    """`llada-hf eval` (lm_eval_backend.main): a UsageError naming the argument before lm-eval indexes a task or
    loads a model (its `execute` must not be reached)."""
    pytest.importorskip("lm_eval")
    import torch
    from lm_eval._cli import HarnessCLI

    from llada_hf.errors import UsageError
    from llada_hf.lm_eval_backend import main

    if "CUDA" in names and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")

    def execute(self, args):
        raise AssertionError("lm-eval ran before the arguments were checked")

    monkeypatch.setattr(HarnessCLI, "execute", execute)
    with pytest.raises(UsageError) as error:
        main(["--tasks", "arc_easy", *argv])
    for name in names:
        assert name in str(error.value)


def test_lm_eval_sampler_settings_reach_generate_as_given(tmp_path):
    """temperature 0 stays greedy under a checkpoint whose generation_config samples (it was dropped, so the
    checkpoint's sampling decided); a positive temperature arrives unchanged."""
    pytest.importorskip("lm_eval")
    import shutil

    from lm_eval.api.instance import Instance
    from transformers import GenerationConfig

    from llada_hf.lm_eval_backend import LLaDAEvalHarness
    from llada_hf.loading import DEMO_DIR

    folder = tmp_path / "sampling_demo"
    shutil.copytree(DEMO_DIR, folder)
    config = GenerationConfig.from_pretrained(folder)
    config.update(do_sample=True, temperature=0.9)
    config.save_pretrained(folder)
    request = [Instance("generate_until", {}, ("What is 1 + 2?", {"until": []}), 0, ("task", 0, 1))]
    for temperature, expected in ((0, {"do_sample": False}), (0.7, {"do_sample": True, "temperature": 0.7})):
        lm = LLaDAEvalHarness(pretrained=str(folder), dtype="float32", device="cpu", temperature=temperature)
        seen, generate = [], lm.model.generate

        def spy(input_ids, seen=seen, generate=generate, **kwargs):
            seen.append({key: kwargs[key] for key in ("do_sample", "temperature") if key in kwargs})
            return generate(input_ids, **kwargs)

        lm.model.generate = spy
        lm.generate_until(request)
        assert seen == [expected]


# =====================================================================================================================
# Export.
# =====================================================================================================================


# =====================================================================================================================
# Command line: every subcommand checks its flags before loading a model; one line, exit 2 (usage) or 1 (runtime).
# =====================================================================================================================
