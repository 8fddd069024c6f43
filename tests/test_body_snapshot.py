"""The model body computes bit for bit what it computed when `fixtures/body_snapshot.*` was recorded.

`fixtures/record_body_snapshot.py` recorded, for each family's tiny fixture, fp32 and bf16 forward logits (no mask, a
padding mask, LLaDA2's block-causal 4-D mask) and `generate()` outputs (greedy, seeded sampling, CFG, caches, left
padding; LLaDA2 default and `official=True`) before the shared body was factored out; a refactor of `modeling/` must
reproduce them exactly (`torch.equal`, not a tolerance).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("record_body_snapshot", FIXTURES / "record_body_snapshot.py")
recorder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorder)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def snapshot():
    return load_file(FIXTURES / "body_snapshot.safetensors"), json.loads((FIXTURES / "body_snapshot.json").read_text())


@pytest.mark.parametrize("family", recorder.FAMILIES)
def test_body_is_bit_identical_to_the_snapshot(snapshot, family):
    recorded_logits, recorded_outputs = snapshot
    logits, outputs = recorder.compute(family)
    assert sorted(logits) == sorted(k for k in recorded_logits if k.startswith(family + "/"))
    for name, tensor in logits.items():
        assert tensor.dtype == recorded_logits[name].dtype, name
        assert torch.equal(tensor, recorded_logits[name]), name
    assert outputs == {k: v for k, v in recorded_outputs.items() if k.startswith(family + "/")}
