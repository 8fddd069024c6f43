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


# =====================================================================================================================
# Export.
# =====================================================================================================================


# =====================================================================================================================
# Command line: every subcommand checks its flags before loading a model; one line, exit 2 (usage) or 1 (runtime).
# =====================================================================================================================
