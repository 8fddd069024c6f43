"""The embedded demo model (offline, sensible answers, `llada-hf demo`) and CI-sized runs of the experiments."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from llada_hf.demo import (
    DEMO_DIR,
    PHRASINGS,
    answer_questions,
    arithmetic_answer,
    load_demo_model,
    run_demo,
    split_pairs,
)

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def test_demo_model_is_small_and_shipped(demo):
    model, tokenizer = demo
    assert (DEMO_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert type(model).__name__ == "LLaDAModelLM" and not model.training
    assert tokenizer.mask_token_id == model.config.mask_token_id == model.generation_config.mask_token_id
    assert model.generation_config.eot_token_id == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>")


def test_demo_model_adds_held_out_numbers(demo):
    model, tokenizer = demo
    _, held_out = split_pairs()
    pairs = held_out[:8]
    questions = [PHRASINGS[i % len(PHRASINGS)].format(a=a, b=b) for i, (a, b) in enumerate(pairs)]
    answers = answer_questions(model, tokenizer, questions)
    correct = [answer == arithmetic_answer(a, b) for answer, (a, b) in zip(answers, pairs)]
    assert sum(correct) >= 6, list(zip(questions, answers))
    # Even when a sum is wrong, the answer keeps the "a + b = c." shape.
    assert all(answer.startswith(f"{a} + {b} = ") and answer.endswith(".") for answer, (a, b) in zip(answers, pairs))


def test_run_demo_offline_through_the_pipeline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = argparse.Namespace(model=None, prompt=["What is 21 + 34?"], no_visualize=False, dtype="auto")
    assert run_demo(args) == 0
    out = capsys.readouterr().out
    assert "User: What is 21 + 34?" in out
    assert "LLaDA: 21 + 34 = 55." in out
    assert "step 1/16" in out and "step 16/16" in out and "░" in out  # the canvas drawn step by step
    assert "GSAI-ML/LLaDA-8B-Instruct" in out


def test_demo_cli(capsys):
    from llada_hf import cli

    assert cli.main(["demo", "--no-visualize", "--prompt", "Add 3 and 4."]) == 0
    out = capsys.readouterr().out
    assert "LLaDA: 3 + 4 = 7." in out and "step 1/" not in out


# ---------------------------------------------------------------------------------------------------------------------
# Experiments, CI-sized (`--quick`): the scripts run end to end and write well-formed results


def _check_outputs(out_dir: Path, name: str) -> dict:
    for suffix in ("md", "json", "png"):
        assert (out_dir / f"{name}.{suffix}").stat().st_size > 0
    markdown = (out_dir / f"{name}.md").read_text()
    assert markdown.startswith("# ") and ("| masked diffusion |" in markdown or "| rule |" in markdown)
    assert (out_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out_dir / f"{name}.json").read_text())


def test_reversal_quick(tmp_path):
    import reversal

    assert reversal.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    data = _check_outputs(tmp_path, "reversal")
    for kind in ("mdm", "ar"):
        for metric in ("forward_held_out", "reverse_held_out", "forward_trained", "reverse_trained_control"):
            assert 0 <= data["summary"][kind][metric]["mean"] <= 1
    assert "reverse_infill_held_out" in data["summary"]["mdm"] and set(data["best_lr"]) == {"mdm", "ar"}


def test_reversal_data_design():
    import reversal

    vocab = reversal.Vocab(10)
    test_group, both_group = reversal.make_entities(4, 6, seed=0)
    sentences = reversal.training_sentences(vocab, test_group, both_group)
    assert len(sentences) == 4 * 3 + 6 * 8
    text = {tuple(s) for s in sentences}
    for name, description in test_group:  # test entities: never description-first, never the held-out relation
        for relation in range(len(reversal.REVERSE_RELATIONS)):
            prompt, answer = reversal.reverse_words(name, description, relation)
            assert not any(tuple(vocab.encode(prompt + answer)) == s[1:-1] for s in text)
        prompt, answer = reversal.forward_words(name, description, reversal.HELD_OUT_FORWARD)
        assert not any(tuple(vocab.encode(prompt + answer)) == s[1:-1] for s in text)


def test_planning_tasks_are_well_formed():
    import planning

    task = planning.StarGraphs(degree=3, arm_length=3, num_nodes=12)
    prompts, answers = task.sample(16, torch.Generator().manual_seed(0))
    assert prompts.shape == (16, task.prompt_length) and answers.shape == (16, task.answer_length)
    for prompt, answer in zip(prompts.tolist(), answers.tolist()):
        edges = prompt[1 : 1 + 3 * 9]
        pairs = {(edges[i], edges[i + 1]) for i in range(0, len(edges), 3)}
        start, goal = prompt[-4], prompt[-2]
        path = [start, *answer[:-1]]
        assert path[-1] == goal and all((u, v) in pairs for u, v in zip(path, path[1:]))

    clock = planning.ClockWalk(positions=5)
    prompts, answers = clock.sample(16, torch.Generator().manual_seed(0))
    first = planning.FIRST_NODE
    for prompt, answer in zip(prompts.tolist(), answers.tolist()):
        moves, goal, path = prompt[1:5], prompt[-2], answer[:-1]
        assert path[-1] == goal and answer[-1] == planning.EOS
        assert all((x - first + k - first) % 10 == y - first for x, k, y in zip(path, moves, path[1:]))


def test_planning_quick(tmp_path):
    import planning

    assert planning.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    for name in ("clock", "star"):
        data = _check_outputs(tmp_path, f"planning_{name}")
        assert data["task"] == name and set(data["summary"]) == {"mdm", "ar"}
        assert all(0 <= data["summary"]["mdm"][m]["mean"] <= 1 for m in planning.METRICS)
        steps = data["runs"]["mdm"][0]["commit_step"]  # one token per step: each example commits at steps 0..L-1
        assert (
            sum(steps) == pytest.approx(len(steps) * (len(steps) - 1) / 2, abs=0.01) and max(steps) <= len(steps) - 1
        )


def test_decode_order_is_one_commit_per_step():
    """The decoding-order measurement of the planning experiment: each row commits every position exactly once."""
    from common import Backbone, build_model, mdm_decode, mdm_decode_order

    backbone = Backbone(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = build_model(backbone, vocab_size=20, max_length=16, seed=0)
    prompts = torch.randint(3, 20, (4, 6), generator=torch.Generator().manual_seed(0))
    answers, steps = mdm_decode_order(model, prompts, 5)
    assert torch.equal(answers, mdm_decode(model, prompts, 5)[0])
    assert torch.equal(steps.sort(-1).values, torch.arange(5).expand(4, 5))


def test_clock_walk_mdm_learns_the_step_before_the_goal():
    """Cheap check that training works: 600 steps teach the masked model the last move (chance: 10 %)."""
    import planning
    from common import Backbone, build_model, train

    task = planning.ClockWalk(positions=4)
    test = task.sample(200, torch.Generator().manual_seed(1))
    model = build_model(Backbone(), task.vocab_size, 16, seed=0)
    train(model, "mdm", task.batches(64, seed=0), steps=600, lr=2e-3, seed=0, warmup=50)
    assert planning.evaluate(model, "mdm", task, *test)["before_goal_accuracy"] > 0.5


@pytest.mark.slow
def test_clock_walk_mdm_plans_and_ar_cannot_start():
    """The planning result at the experiment's budget (1500 steps, lr 1e-3): MDM solves it, AR stays near chance."""
    import planning
    from common import Backbone, build_model, train

    task = planning.ClockWalk(positions=5)
    test = task.sample(500, torch.Generator().manual_seed(10_000))
    accuracy = {}
    for kind in ("mdm", "ar"):
        model = build_model(Backbone(hidden_size=64, num_hidden_layers=3), task.vocab_size, 16, seed=0)
        train(model, kind, task.batches(64, seed=0), steps=1500, lr=1e-3, seed=0, warmup=100)
        accuracy[kind] = planning.evaluate(model, kind, task, *test)
    assert accuracy["mdm"]["path_accuracy"] > 0.9, accuracy
    assert accuracy["ar"]["first_token_accuracy"] < 0.3, accuracy


def test_decoding_quick(tmp_path):
    import decoding

    assert decoding.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    data = _check_outputs(tmp_path, "decoding")
    fixed = [r for r in data["demo"] if r["rule"] == "fixed k"]
    assert [r["forwards"] for r in fixed] == [16, 8, 4, 2, 1]
    assert fixed[0]["accuracy"] >= 0.9  # one token per step: the demo model answers held-out questions
    assert all(r["tokens_per_forward"] >= 1 for r in data["demo"])
    assert all(r["tokens_per_forward"]["mean"] >= 1 and 0 <= r["accuracy"]["mean"] <= 1 for r in data["clock"])


def test_causal_twin_sees_only_the_past():
    from common import Backbone, ar_logits, build_model

    backbone = Backbone(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = build_model(backbone, vocab_size=20, max_length=16, seed=0)
    x = torch.randint(3, 20, (2, 10))
    y = x.clone()
    y[:, 6:] = 5
    assert torch.equal(ar_logits(model, x)[:, :6], ar_logits(model, y)[:, :6])
    assert not torch.equal(model(x).logits[:, :6], model(y).logits[:, :6])  # the MDM is bidirectional


def test_self_correction_quick(tmp_path):
    import self_correction

    assert self_correction.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    markdown = (tmp_path / "self_correction.md").read_text()
    assert markdown.startswith("# ") and "| re-masked per answer |" in markdown
    data = json.loads((tmp_path / "self_correction.json").read_text())
    rows = [*data["demo"].values(), *data["clock_per_seed"][0].values()]
    assert {r["rule"] for r in rows} == {"low_confidence", "random"}
    for row in rows:  # (tau, budget) was chosen on validation; it is the best of its grid there
        assert row["chosen_validation"] == max(row["grid"].values()) and row["chosen"] in row["grid"]
        assert 0 <= row["self_correction"] <= 1 and row["remasked_per_answer"] >= 0


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_run_parallel_keeps_call_order_and_matches_the_serial_run(context):
    """The experiments' `--jobs`: results in call order, the same as one process (runs are seeded, not shared)."""
    from common import run_parallel

    calls = [(3, 4), (2, 10), (7, 2), (5, 3)]
    serial = run_parallel(pow, calls, jobs=1)
    assert serial == [a**b for a, b in calls]
    assert run_parallel(pow, calls, jobs=3, context=context) == serial
