"""CI-sized runs of experiments/star_revisited.py and experiments/adaptation.py, and the mechanisms they rely on: the
mask-count loss estimator, the wrong-first-token categories, the AR -> MDM conversion and the attention annealing."""

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import adaptation  # noqa: E402
import star_revisited  # noqa: E402
from common import BOS, MASK, Backbone, build_model, causal_mask, train  # noqa: E402
from planning import ANSWER_SEP, EDGE_SEP, FIRST_NODE, GOAL, START, ClockWalk, StarGraphs  # noqa: E402

from llada_hf.training import sft_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_star_revisited_quick(tmp_path):
    assert star_revisited.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "star_revisited.json").read_text())
    assert (tmp_path / "star_revisited.png").stat().st_size > 0
    assert "# Star graph revisited" in (tmp_path / "star_revisited.md").read_text()
    assert data["selected"] in data["mdm"] and len(data["ar"]) == 1
    for record in [*itertools.chain(*data["mdm"].values()), *data["ar"]]:
        test = record["test"]
        assert sum(test["first_token_categories"].values()) == pytest.approx(1.0)  # a partition of the examples
        assert test["first_token_categories"]["correct"] == pytest.approx(test["first_token_accuracy"])
        if record["kind"] == "mdm":  # one token per step: every position committed once, steps 0..L-1
            assert sum(test["commit_step"]) == pytest.approx(sum(range(len(test["commit_step"]))), abs=1e-2)
            assert set(test["lookups"]) and all(0 <= v <= 1 for v in test["lookups"].values())


def test_star_revisited_parts_over_disjoint_seeds_merge_into_one_report(tmp_path):
    """`--first-seed 1` trains seed 1 alone (no selection: seed 0 selects); `--merge` reports both parts as one run,
    its means recomputed from the merged records, overlapping seeds refused."""
    for first, out in ((0, "a"), (1, "b")):
        assert star_revisited.main(["--quick", "--seeds", "1", "--first-seed", str(first), "--out-dir",
                                    str(tmp_path / out)]) == 0  # fmt: skip
    part = json.loads((tmp_path / "b" / "star_revisited.json").read_text())
    assert part["selected"] is None and [r["seed"] for r in part["ar"]] == [1]
    parts = [str(tmp_path / out / "star_revisited.json") for out in "ab"]
    assert star_revisited.main(["--merge", *parts, "--out-dir", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "star_revisited.json").read_text())
    assert [r["seed"] for r in merged["ar"]] == [0, 1] and merged["config"]["seeds"] == 2
    first = json.loads((tmp_path / "a" / "star_revisited.json").read_text())
    assert merged["selected"] == first["selected"]
    values = [r["test"]["first_token_accuracy"] for r in merged["ar"]]
    assert merged["summary"]["ar"]["first_token_accuracy"]["mean"] == pytest.approx(sum(values) / 2)
    assert "and python experiments/star_revisited.py" in (tmp_path / "m" / "star_revisited.md").read_text()
    with pytest.raises(SystemExit, match="overlap"):
        star_revisited.main(["--merge", parts[0], parts[0], "--out-dir", str(tmp_path / "x")])


def test_adaptation_quick(tmp_path):
    assert adaptation.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "adaptation.json").read_text())
    assert (tmp_path / "adaptation.png").stat().st_size > 0
    assert set(data["runs"]) == {"scratch", "adapted", "adapted_no_anneal"}
    steps, every = data["config"]["steps"], data["config"]["eval_every"]
    for records in data["runs"].values():
        for record in records:
            assert [point["step"] for point in record["curve"]] == list(range(0, steps + 1, every))
            assert record["test_path"] == record["curve"][-1]["test_path"]
    assert data["best_lr"]["adapted"] in [float(x) for x in data["config"]["adapted_lrs"].split(",")]


def _exact_elbo(model, input_ids: torch.LongTensor, prompt_length: int) -> torch.Tensor:
    """The SFT ELBO term E[loss] by enumerating every mask set S of the L answer tokens, weighted by
    P(S) / |S| = (|S| - 1)! (L - |S|)! / L! (t ~ U(0, 1), each token masked with probability t, CE / t), / L."""
    answer = input_ids.shape[1] - prompt_length
    total = torch.zeros(())
    for size in range(1, answer + 1):
        weight = math.factorial(size - 1) * math.factorial(answer - size) / math.factorial(answer)
        for subset in itertools.combinations(range(answer), size):
            positions = [prompt_length + i for i in subset]
            noisy = input_ids.clone()
            noisy[:, positions] = MASK
            logits = model(input_ids=noisy).logits[:, positions]
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, positions], reduction="none")
            total = total + weight * ce.sum(-1).mean()
    return total / answer


@torch.no_grad()
def test_count_estimator_is_unbiased_for_the_sft_elbo():
    task = StarGraphs(2, 2, 6)
    model = build_model(Backbone(16, 1, 2, 32), task.vocab_size, task.prompt_length + task.answer_length, 0).eval()
    prompts, answers = task.sample(4, torch.Generator().manual_seed(0))
    ids = torch.cat([prompts, answers], dim=1)
    lengths = torch.full((4,), task.prompt_length)
    exact = _exact_elbo(model, ids, task.prompt_length)
    generator = torch.Generator().manual_seed(1)
    draws = torch.stack([star_revisited.count_sft_loss(model, ids, lengths, generator) for _ in range(300)])
    assert abs(draws.mean() - exact) < 4 * draws.std() / math.sqrt(len(draws)) + 1e-3, (draws.mean(), exact)
    # the package's estimator targets the same value with 1 / t weights: far noisier on a 4-token answer
    sft = torch.stack([sft_loss(model, ids, lengths, generator=generator) for _ in range(100)])
    assert draws.std() < sft.std() / 10, (draws.std(), sft.std())


def test_count_estimator_masks_one_to_all_answer_tokens_never_the_prompt():
    task = StarGraphs(2, 3, 8)
    prompts, answers = task.sample(256, torch.Generator().manual_seed(0))
    ids = torch.cat([prompts, answers], dim=1)
    seen = []

    class Spy(torch.nn.Module):
        config = type("Config", (), {"mask_token_id": MASK})()

        def forward(self, input_ids):
            seen.append(input_ids)
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, task.vocab_size, requires_grad=True)})()

    star_revisited.count_sft_loss(Spy(), ids, torch.full((256,), task.prompt_length), torch.Generator().manual_seed(0))
    masked = seen[0] == MASK
    assert not masked[:, : task.prompt_length].any()
    counts = masked[:, task.prompt_length :].sum(-1)
    assert counts.min() == 1 and counts.max() == task.answer_length  # k ~ U{1..L}: both ends occur in 256 rows


def test_first_token_categories_of_a_hand_built_star():
    # centre 0, arms 1 -> 2 -> 3 (the goal's) and 4 -> 5 -> 6; node 7 is not in the graph
    n = [FIRST_NODE + i for i in range(8)]
    edges = [(n[0], n[1]), (n[4], n[5]), (n[1], n[2]), (n[0], n[4]), (n[2], n[3]), (n[5], n[6])]
    prompt = [BOS, *itertools.chain(*[(a, b, EDGE_SEP) for a, b in edges]), START, n[0], GOAL, n[3], ANSWER_SEP]
    answer = [n[1], n[2], n[3], 0]
    guesses = [n[1], n[4], n[0], n[3], n[2], n[5], n[7]]  # one per category, in CATEGORIES order
    prompts = torch.tensor([prompt] * len(guesses))
    answers = torch.tensor([answer] * len(guesses))
    task = StarGraphs(2, 3, 8)
    assert prompts.shape[1] == task.prompt_length
    categories = star_revisited.first_token_categories(task, prompts, answers, torch.tensor(guesses))
    assert list(categories) == list(star_revisited.CATEGORIES)
    assert all(v == pytest.approx(1 / len(guesses)) for v in categories.values()), categories


def test_conversion_keeps_the_ar_twin_and_the_check_catches_a_change(monkeypatch):
    task = ClockWalk(4)
    model = build_model(Backbone(16, 2, 2, 32), task.vocab_size, task.prompt_length + task.answer_length, 0).eval()
    prompts, answers = task.sample(3, torch.Generator().manual_seed(0))
    ids = torch.cat([prompts, answers], dim=1)
    converted = adaptation.convert_twin(model, check=ids)
    for name, tensor in model.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    with torch.no_grad():  # not vacuous: without the causal mask the same weights compute something else
        assert not torch.allclose(converted(input_ids=ids).logits, model(input_ids=ids, attention_mask=causal_mask(
            ids.shape[1])).logits, atol=1e-4)  # fmt: skip
    real = adaptation.convert_llama_to_llada

    def perturbed(*args, **kwargs):
        out = real(*args, **kwargs)
        with torch.no_grad():
            out.model.embed_tokens.weight.add_(0.1) if hasattr(out, "model") else next(out.parameters()).add_(0.1)
        return out

    monkeypatch.setattr(adaptation, "convert_llama_to_llada", perturbed)
    with pytest.raises(AssertionError, match="differs from the AR twin"):
        adaptation.convert_twin(model, check=ids)


def test_train_mdm_anneals_from_causal_to_full_then_matches_common_train():
    task = ClockWalk(4)
    length = task.prompt_length + task.answer_length
    model = build_model(Backbone(16, 1, 2, 32), task.vocab_size, length, 0)
    masks = []
    model.register_forward_pre_hook(lambda m, a, kw: masks.append(kw.get("attention_mask")), with_kwargs=True)
    adaptation.train_mdm(model, task.batches(8, 0), steps=4, lr=1e-3, seed=0, anneal_steps=2, warmup=1)
    assert len(masks) == 4
    assert torch.equal(masks[0], causal_mask(length))  # step 0: the AR model's own attention
    window = round(0.5 * (length - 1))  # step 1: half-way, each query sees `window` keys to its right
    allowed = masks[1][0, 0] == 0
    assert allowed.sum(-1).tolist() == [min(i + 1 + window, length) for i in range(length)]
    assert masks[2] is None and masks[3] is None  # then bidirectional (no mask)
    # without annealing the loop is common.train's MDM loop: same batches, RNG draws and updates
    a = build_model(Backbone(16, 1, 2, 32), task.vocab_size, length, 0)
    b = build_model(Backbone(16, 1, 2, 32), task.vocab_size, length, 0)
    loss_a = adaptation.train_mdm(a, task.batches(8, 0), steps=5, lr=1e-3, seed=0, warmup=2)["final_loss"]
    loss_b = train(b, "mdm", task.batches(8, 0), steps=5, lr=1e-3, seed=0, warmup=2)["final_loss"]
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
