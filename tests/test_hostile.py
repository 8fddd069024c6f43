"""Hostile inputs, as a new user would try them: each case asserts the error type and that the message names the
argument (or, for the command line, one line on stderr, the exit code and an untouched output folder).

Sections: library entry points (likelihood, config loading, memory, generation), data and training, lm-eval, export,
command line. Each section keeps its own parametrised cases.
"""

import os
import re
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


# =====================================================================================================================
# Export.
# =====================================================================================================================


# =====================================================================================================================
# Command line: every subcommand checks its flags before loading a model; one line, exit 2 (usage) or 1 (runtime).
# =====================================================================================================================

_IMPORT_NOISE = re.compile(r"^(Failed to load \S*torchao|[WI]\d{4} [\d:. ]+\d+ \S*site-packages/)")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`run_cli`, minus the log lines a broken torchao build prints while `import llada_hf` imports transformers
    (before any llada_hf code runs; not this package's output)."""
    result = run_cli(*args, cwd=cwd)
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if not _IMPORT_NOISE.match(line))
    return result


_NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only message")

# (argv, exit code, what the one line must name). Each fails before a model loads, except `--block-length 5` alone
# (checked against the embedded demo model's generation_config.json after loading, before the session starts).
CLI_FLAG_CASES = [
    (["chat", "--steps", "-1"], 2, ["--steps", "positive integer"]),
    (["chat", "--steps", "abc"], 2, ["--steps", "integer"]),
    (["chat", "--temperature", "nan"], 2, ["--temperature", "finite"]),
    (["chat", "--temperature", "-0.5"], 2, ["--temperature", ">= 0"]),
    (["chat", "--block-length", "0"], 2, ["--block-length", "positive integer"]),
    (["chat", "--block-length", "5"], 2, ["--block-length", "max_new_tokens", "generation_config.json"]),
    (["chat", "--max-new-tokens", "16", "--block-length", "5"], 2, ["--block-length", "--max-new-tokens"]),
    (["chat", "--max-new-tokens", "8", "--steps", "16"], 2, ["--steps", "--max-new-tokens"]),
    (["chat", "--max-new-tokens", "16", "--block-length", "4", "--steps", "6"], 2, ["--steps", "blocks"]),
    (["chat", "--threshold", "2"], 2, ["--threshold", "(0, 1]"]),
    (["chat", "--threshold", "0"], 2, ["--threshold", "(0, 1]"]),
    (["chat", "--cfg-scale", "-1"], 2, ["--cfg-scale"]),
    (["chat", "--cfg-scale", "nan"], 2, ["--cfg-scale", "finite"]),
    (["chat", "--max-new-tokens", "0"], 2, ["--max-new-tokens", "positive integer"]),
    (["chat", "--dtype", "int3"], 2, ["--dtype", "invalid choice"]),
    (["chat", "--remasking", "best"], 2, ["--remasking"]),
    (["chat", "--bogus"], 2, ["--bogus"]),
    (["chat", "--model", "/nonexistent/model"], 1, ["/nonexistent/model"]),
    (["demo", "--device-map", "gpu0"], 2, ["--device-map", "unknown device"]),
    pytest.param(["demo", "--device-map", "cuda"], 2, ["--device-map", "no CUDA device"], marks=_NO_CUDA),
    pytest.param(["chat", "--device-map", "cuda:0"], 2, ["--device-map", "no CUDA device"], marks=_NO_CUDA),
    pytest.param(["demo", "--device-map", "0"], 2, ["--device-map", "no CUDA device"], marks=_NO_CUDA),
    (["memory", "--max-memory", "garbage"], 2, ["--max-memory", "DEVICE=SIZE"]),
    (["memory", "--max-memory", "0=lots"], 2, ["--max-memory", "22GiB"]),
    (["memory", "--batch-size", "-3"], 2, ["--batch-size", "positive integer"]),
    (["memory", "--max-new-tokens", "-100"], 2, ["--max-new-tokens", ">= 0"]),
    (["memory", "--max-new-tokens", "0"], 2, ["--max-new-tokens", "--prompt-length"]),
    (["memory", "--seq-len", "0"], 2, ["--seq-len", "positive integer"]),
    (["memory", "/nonexistent/config"], 1, ["/nonexistent/config"]),
    pytest.param(["eval", "--device", "cuda", "--tasks", "x"], 2, ["--device", "no CUDA device"], marks=_NO_CUDA),
    (["eval", "--model_args", "pretrained=/missing/path", "--tasks", "x"], 2, ["pretrained=/missing/path"]),
    (["eval", "--model_args", "pretrained=llada_hf/assets/demo,device_map=gpu0"], 2, ["device_map="]),
]


def _case_id(value) -> str | None:
    return "_".join(value) if isinstance(value, list) and value[0] in ("chat", "demo", "memory", "eval") else None


@pytest.mark.parametrize(("argv", "code", "names"), CLI_FLAG_CASES, ids=_case_id)
def test_cli_bad_flag_is_one_line(argv, code, names, tmp_path):
    result = _cli(*argv, cwd=tmp_path)
    assert_one_line_error(result, code, *names)
    assert not any(tmp_path.iterdir())  # nothing written next to the run


def _demo_export_folder(tmp_path: Path) -> Path:
    """A non-empty folder: a stale tokenizer from an earlier export (what `--format official` used to leave)."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    (folder / "sub").mkdir()
    (folder / "sub" / "x.txt").write_text("old")
    return folder


@pytest.mark.parametrize(
    ("extra", "code", "names"),
    [
        ([], 2, ["--output", "not empty", "--overwrite"]),  # refuses a non-empty folder
        (["--format", "official"], 2, ["--output", "--overwrite"]),
        (["--model", "/nonexistent/model", "--overwrite"], 1, ["/nonexistent/model"]),  # cleared only once loaded
        (["--format", "bin"], 2, ["--format"]),
    ],
)
def test_cli_export_into_a_non_empty_folder_is_refused_and_untouched(extra, code, names, tmp_path):
    from llada_hf.loading import DEMO_DIR

    folder = _demo_export_folder(tmp_path)
    before = folder_state(folder)
    argv = ["export", "--model", str(DEMO_DIR), "--output", str(folder), *extra]
    assert_one_line_error(_cli(*argv), code, *names)
    assert folder_state(folder) == before


def test_cli_export_output_that_is_a_file_or_the_model_folder(tmp_path):
    from llada_hf.loading import DEMO_DIR

    file = tmp_path / "model.txt"
    file.write_text("keep")
    before = folder_state(tmp_path)
    assert_one_line_error(_cli("export", "--model", str(DEMO_DIR), "--output", str(file)), 2, "--output", "a file")
    assert folder_state(tmp_path) == before and file.read_text() == "keep"
    demo = folder_state(DEMO_DIR)
    argv = ["export", "--model", str(DEMO_DIR), "--output", str(DEMO_DIR.parent), "--overwrite"]
    assert_one_line_error(_cli(*argv), 2, "--output", "--model")
    assert folder_state(DEMO_DIR) == demo


def test_cli_export_overwrite_clears_the_folder_first(tmp_path):
    """`--overwrite` empties the folder: no stale tokenizer survives next to the new official-layout weights."""
    from llada_hf.loading import DEMO_DIR

    folder = _demo_export_folder(tmp_path)
    result = _cli("export", "--model", str(DEMO_DIR), "--output", str(folder), "--format", "official", "--overwrite")
    assert result.returncode == 0, result.stderr
    written = set(folder_state(folder))
    assert "model.safetensors" in written and "config.json" in written
    assert not {"sub", "sub/x.txt"} & written
    if "tokenizer.json" in written:  # written by this export (the official export may save the tokenizer)
        assert (folder / "tokenizer.json").read_text() != "{}"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": -2}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"seq_len": -100}, "seq_len"),
        ({"max_memory": {0: "garbage"}, "device_map": "auto"}, "max_memory"),
        ({"remasking": "best"}, "remasking"),
    ],
)
def test_estimate_memory_refuses_bad_sizes(kwargs, name):
    from llada_hf.hub import load_hub_config
    from llada_hf.memory import estimate_memory

    with pytest.raises(ValueError, match=name):
        estimate_memory(load_hub_config("llada_hf/tiny"), **kwargs)
