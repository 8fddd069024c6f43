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
