"""`experiments/editing.py` end to end at CI size (`--quick`): LLaDA2-architecture model trained block-causally, then
evaluated with the LLaDA2.1 sampler without editing and in the S / Q modes; the table and JSON are well formed."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import editing  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_editing_quick(tmp_path):
    argv = ["--quick", "--out-dir", str(tmp_path), "--checkpoints", str(tmp_path / "checkpoints")]
    assert editing.main(argv) == 0
    data = json.loads((tmp_path / "editing.json").read_text())
    assert set(data["summary"]) == {"noise0", "noise0.1"}  # masks only; with token-to-token training noise
    for variant in data["summary"].values():
        assert set(variant) == {name for name, *_ in editing.MODES}
        for mode in variant.values():
            assert 0 <= mode["accuracy"]["mean"] <= 100 and mode["forwards"]["mean"] >= 2  # 2 blocks: a forward each
    assert "S mode" in (tmp_path / "editing.md").read_text()
