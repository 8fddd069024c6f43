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
    """A small LLaDA config (vocab 1024, mask 1000, EOS=PAD 1001), like the golden checkpoint."""
    params = dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        mask_token_id=1000,
        eos_token_id=1001,
        pad_token_id=1001,
        bos_token_id=1002,
    )
    params.update(overrides)
    return llada_hf.LLaDAConfig(**params)


def tiny_model(seed: int = 0, **overrides) -> "llada_hf.LLaDAModelLM":
    torch.manual_seed(seed)
    return llada_hf.LLaDAModelLM(tiny_config(**overrides)).eval()
