"""Shared fixtures: the golden official-format checkpoint and tiny random models built locally (no network)."""

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import llada_hf  # noqa: E402  (registers the Auto classes)

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden_tiny"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on the 2 shared cores run several times faster on one torch thread (two oversubscribe); modules
    opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`. The setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def golden_cases() -> dict:
    return json.loads((GOLDEN_DIR / "cases.json").read_text())


@pytest.fixture(scope="session")
def golden_model():
    """The tiny official-format checkpoint, loaded through the Auto class (fp32, eval)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(GOLDEN_DIR).eval()


def tiny_config(**overrides) -> "llada_hf.LLaDAConfig":
    """The `llada_hf/tiny` hub config (vocab 1024, mask 1000, EOS=PAD 1001), like the golden checkpoint."""
    from llada_hf.hub import load_hub_config

    return load_hub_config("llada_hf/tiny", **overrides)


def tiny_model(seed: int = 0, **overrides) -> "llada_hf.LLaDAModelLM":
    torch.manual_seed(seed)
    return llada_hf.LLaDAModelLM(tiny_config(**overrides)).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Derived float32 tolerances. Two float32 results of the same math that differ only in the order of their additions
# (another BLAS kernel, a merged LoRA weight, a sharded all-reduce, a cache) are each within n * eps of the exact value
# after a chain of n additions (Higham's gamma_n bound), relative to the magnitudes summed. So a comparison allows
# 2 * eps * depth * max|reference|: it holds on any CPU, and a real bug (a wrong weight, mask or position) moves the
# result by orders of magnitude more. Bit-identical comparisons stay torch.equal; token ids stay exact.

FP32_EPS = torch.finfo(torch.float32).eps


def forward_depth(config, seq_len: int = 0, vocab: bool = False) -> int:
    """The longest chain of float32 additions in one forward pass: per layer the q/k/v projection (hidden), the
    scores (head_dim), the attention-weighted sum (seq_len), the output projection (hidden), the MLP's gate/up
    (hidden) and down (intermediate) projections; then the head (hidden), plus a softmax over the vocabulary when
    the result is a loss or a log-likelihood (`vocab=True`)."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    intermediate = max(getattr(config, "intermediate_size", 0) or 0, getattr(config, "moe_intermediate_size", 0) or 0)
    per_layer = 3 * hidden + head_dim + seq_len + intermediate
    return config.num_hidden_layers * per_layer + hidden + (config.vocab_size if vocab else 0)


def fp32_tol(reference, depth: int) -> float:
    """Absolute tolerance for comparing against float32 `reference` (a tensor or a number) after `depth` chained
    additions: 2 * eps * depth * max|reference| (see above). Use as `atol=` / `abs=` / `<=`."""
    if isinstance(reference, torch.Tensor):
        magnitude = reference.detach().abs().max().item() if reference.numel() else 0.0
    else:
        magnitude = abs(float(reference))
    return 2 * FP32_EPS * depth * max(magnitude, torch.finfo(torch.float32).tiny)


REMOTE_CODE_CHECK = Path(__file__).parent / "remote_code_check.py"


def run_remote_code_check(checkpoint: Path, ids: list, tmp_path: Path, *extra: str) -> list[str]:
    """`tests/remote_code_check.py CHECKPOINT IDS [EXTRA]` where llada_hf cannot be imported (bare env, its own
    modules cache): what a user without the package gets from `trust_remote_code=True`. Returns its stdout lines."""
    import subprocess
    import sys

    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(REMOTE_CODE_CHECK), str(checkpoint), json.dumps(ids), *extra],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


def llada21_checkpoint(folder: Path) -> Path:
    """The tiny LLaDA2.1 model (LLaDA2.0's config.json format) with the demo tokenizer (its ids fit the tiny vocab),
    saved under `folder`, whose name is what picks the sampler in chat and serve."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(__file__).parent / "fixtures" / "llada21_tiny" / name, folder / name)
    demo = Path(llada_hf.__file__).parent / "assets" / "demo"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(demo / name, folder / name)
    return folder
