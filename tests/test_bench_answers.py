"""The answer benchmark (bench/bench_answers.py) in its CI-sized --quick mode: tiny twins, a few questions."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_answers  # noqa: E402


def test_llama_copy_of_a_llada_is_the_same_causal_model():
    from common import ar_logits

    from llada_hf.demo import load_demo_model

    model, _ = load_demo_model()
    llama = bench_answers.to_llama(model)
    ids = torch.randint(0, 312, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(llama(ids).logits, ar_logits(model, ids), rtol=1e-5, atol=1e-5)


def test_quick_run_writes_table_and_claim(tmp_path):
    assert bench_answers.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--cache-dir",
                               str(tmp_path / "cache")]) == 0  # fmt: skip
    results = json.loads((tmp_path / "answers_cpu.json").read_text())
    assert (tmp_path / "answers_cpu.png").is_file()
    assert [t["task"] for t in results["tasks"]] == ["demo", "clock"]
    for task in results["tasks"]:
        names = [r["variant"] for r in task["rows"]]
        assert names[0] == "MDM 1 tok/step" and any(n.startswith("AR twin") for n in names)
        ref = task["rows"][0]
        assert ref["B1"]["forwards_per_call"] == task["canvas"]  # 1 token per step: one forward per token
        for row in task["rows"]:
            assert 0.0 <= row["accuracy"] <= 1.0 and row["B1"]["ms_per_answer"] > 0
        assert isinstance(task["noise_flag"], bool) and "batch" in task["claim"]
    demo = results["tasks"][0]
    assert demo["rows"][0]["accuracy"] == 1.0  # the shipped demo model answers its held-out questions
    # the trained twins are cached: a second run loads them instead of training
    assert bench_answers.main(["--quick", "--threads", "1", "--tasks", "clock", "--out", str(tmp_path),
                               "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "answers_cpu.json").read_text())
    assert all(r["cached"] for r in again["training"]["clock"].values())
