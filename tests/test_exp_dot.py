"""experiments/diffusion_of_thought.py: the trace's arithmetic, the final-answer extraction, held-out problems, and
the `--quick` run's result files."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import diffusion_of_thought as dot  # noqa: E402

# The token layout, spelt out here instead of read from the module (an independent decoding of what it writes).
EOS, BOS, DIGIT0 = 0, 2, 3
TIMES, ASK, PLUS, EQ, ANS = 13, 14, 15, 16, 17


pytestmark = pytest.mark.usefixtures("one_thread")


def number(tokens: list[int]) -> int:
    """A run of digit tokens, least significant first, as a Python int."""
    assert tokens and all(DIGIT0 <= t <= DIGIT0 + 9 for t in tokens), tokens
    return int("".join(str(t - DIGIT0) for t in reversed(tokens)))


def split(tokens: list[int], separators: set[int]) -> list[tuple[int | None, list[int]]]:
    """[(separator before the segment or None, segment tokens)]."""
    segments, current, separator = [], [], None
    for t in tokens:
        if t in separators:
            segments.append((separator, current))
            current, separator = [], t
        else:
            current.append(t)
    return segments + [(separator, current)]


@pytest.mark.parametrize("n,m", [(4, 2), (3, 3), (2, 4), (1, 1), (5, 3)])
def test_trace_arithmetic_recomputed_with_python_ints(n, m):
    """Parse the prompt and the trace back into numbers: the first segment is a * b_0, each `+` segment is the next
    partial product a * b_j * 10^j, each `=` segment is the sum of every partial product so far, the `#` segment is
    a * b, and the widths are fixed; the direct format is the `#` segment alone."""
    rng = random.Random(n * 10 + m)
    trace, direct = dot.Multiplication(n, m, "trace"), dot.Multiplication(n, m, "direct")
    for _ in range(50):
        a, b = rng.randrange(10 ** (n - 1), 10**n), rng.randrange(10 ** (m - 1), 10**m)
        prompt = trace.prompt_tokens(a, b)
        assert prompt[0] == BOS and prompt[-1] == ASK and prompt[1 + n] == TIMES and len(prompt) == n + m + 3
        assert number(prompt[1 : 1 + n]) == a and number(prompt[2 + n : -1]) == b
        answer = trace.answer_tokens(a, b)
        assert len(answer) == trace.answer_length and answer[-1] == EOS and answer.count(EOS) == 1
        segments = split(answer[:-1], {PLUS, EQ, ANS})
        b_digits = [int(d) for d in reversed(str(b))]
        assert segments[0][0] is None and number(segments[0][1]) == a * b_digits[0]
        assert len(segments[0][1]) == n + 1
        partials, j = [a * b_digits[0]], 0
        for separator, tokens in segments[1:-1]:
            if separator == PLUS:
                j += 1
                assert number(tokens) == a * b_digits[j] * 10**j and len(tokens) == n + 1 + j
                partials.append(number(tokens))
            else:
                assert separator == EQ and number(tokens) == sum(partials) and len(tokens) == n + 1 + j
        assert j == m - 1  # one partial product per digit of b
        assert segments[-1][0] == ANS and number(segments[-1][1]) == a * b == sum(partials)
        assert len(segments[-1][1]) == n + m
        assert direct.answer_tokens(a, b) == [ANS, *segments[-1][1], EOS]
        assert direct.prompt_tokens(a, b) == prompt


def test_final_answer_extraction():
    a, b = 7162, 73
    answer = dot.Multiplication(4, 2, "trace").answer_tokens(a, b)
    assert dot.final_answer(answer) == a * b
    assert dot.final_answer(dot.Multiplication(4, 2, "direct").answer_tokens(a, b)) == a * b
    product = [DIGIT0 + int(d) for d in reversed(str(a * b))]
    assert dot.final_answer([ANS, *product]) == a * b  # no EOS: up to the end
    assert dot.final_answer([ANS, *product, EOS, DIGIT0 + 5, DIGIT0 + 5]) == a * b  # after EOS: ignored
    assert dot.final_answer([ANS, DIGIT0 + 1, ANS, *product, EOS]) == a * b  # the last `#` counts
    assert dot.final_answer([DIGIT0 + 2, DIGIT0 + 1, ANS, DIGIT0 + 0, DIGIT0 + 3, EOS]) == 30
    assert dot.final_answer([*product, EOS]) is None  # no `#`
    assert dot.final_answer([ANS, EOS]) is None  # nothing after it
    assert dot.final_answer([ANS, DIGIT0 + 1, PLUS, DIGIT0 + 2, EOS]) is None  # not all digits
    assert dot.final_answer([ANS, DIGIT0 + 1, 1, EOS]) is None  # a mask left in it
    assert dot.final_answer([ANS, *product[:-1], EOS]) != a * b  # one digit short: a different number
    outputs = torch.tensor([answer, [ANS, *product[:-1], EOS, EOS] + [EOS] * (len(answer) - len(product) - 2)])
    assert dot.answers_correct(outputs, torch.tensor([a * b, a * b])).tolist() == [True, False]


def test_samples_match_their_operands_and_held_out_problems_are_never_drawn():
    task = dot.Multiplication(2, 1, "trace")  # 90 * 9 = 810 problems: a collision would be certain
    prompts, answers, products = task.held_out(100, seed=0)
    keys = {tuple(p) for p in prompts.tolist()}
    assert len(keys) == 100
    for prompt, answer, product in zip(prompts.tolist(), answers.tolist(), products.tolist()):
        a, b = number(prompt[1:3]), number(prompt[4:5])
        assert a * b == product and dot.final_answer(answer) == product
    prompts, answers = task.sample(2000, torch.Generator().manual_seed(1))
    assert not keys & {tuple(p) for p in prompts.tolist()}
    for prompt, answer in zip(prompts.tolist()[:200], answers.tolist()[:200]):
        a, b = number(prompt[1:3]), number(prompt[4:5])
        assert 10 <= a <= 99 and 1 <= b <= 9 and dot.final_answer(answer) == a * b


def test_step_counts_halve_down_to_one():
    assert dot.step_counts(20) == [20, 10, 5, 3, 2, 1]
    assert dot.step_counts(8) == [8, 4, 2, 1]
    assert dot.step_counts(1) == [1]


def test_per_row_forwards_with_a_threshold():
    """Each row's forwards come from the step history: the count generate() reports for that row alone (rows
    differ once the model is confident about some of them), and a fixed schedule spends its steps on every row."""
    task = dot.Multiplication(1, 1, "trace")
    model = dot.build_model(dot.Backbone(hidden_size=32, num_hidden_layers=1), task.vocab_size, 16, seed=0)
    dot.train(model, "mdm", task.batches(32, 0), 200, 1e-2, 0, warmup=5)
    prompts = task.sample(8, torch.Generator().manual_seed(0))[0]
    varied = False
    for threshold in (0.5, 0.3):
        outputs, forwards = dot.mdm_generate(model, prompts, task.answer_length, steps=None, threshold=threshold)
        assert outputs.shape == (8, task.answer_length) and not bool((outputs == dot.MASK).any())
        varied |= len(set(forwards.tolist())) > 1
        for i in range(len(prompts)):
            out = model.generate(prompts[i : i + 1], max_new_tokens=task.answer_length, threshold=threshold,
                                 block_length=task.answer_length, return_dict_in_generate=True)  # fmt: skip
            assert out.nfe == int(forwards[i])
            assert torch.equal(out.sequences[0, prompts.shape[1] :], outputs[i])
    assert varied
    _, forwards = dot.mdm_generate(model, prompts, task.answer_length, steps=2, threshold=None)
    assert forwards.tolist() == [2] * 8


def test_quick_run_writes_results(tmp_path):
    assert dot.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "diffusion_of_thought.json").read_text())
    assert (tmp_path / "diffusion_of_thought.png").stat().st_size > 0
    markdown = (tmp_path / "diffusion_of_thought.md").read_text()
    assert set(data["formats"]) == {"direct", "trace"}
    seeds = data["config"]["seeds"]
    for fmt, result in data["formats"].items():
        assert set(result["summary"]) == {"mdm", "ar"}
        for kind in ("mdm", "ar"):
            runs = result["runs"][kind]
            assert [r["seed"] for r in runs] == list(range(seeds)) and {r["lr"] for r in runs} == {
                result["best_lr"][kind]
            }
            assert result["summary"][kind]["accuracy"]["n"] == seeds
            assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss_curve"]["loss"] for r in runs)
            assert len(result["sweep"][kind]) == len(data["config"]["lr_list"])
        assert {r["forwards"] for r in result["runs"]["ar"]} == {result["answer_length"]}
        steps = [p for p in result["mdm_curve"] if p["rule"] == "steps"]
        assert [p["setting"] for p in steps] == dot.step_counts(result["answer_length"])
        assert [p["forwards"]["mean"] for p in steps] == [float(s) for s in dot.step_counts(result["answer_length"])]
        thresholds = [p for p in result["mdm_curve"] if p["rule"] == "threshold"]
        assert [p["setting"] for p in thresholds] == list(dot.THRESHOLDS)
        assert all(1.0 <= p["forwards"]["mean"] <= result["answer_length"] for p in thresholds)
        assert f"## {fmt} format" in markdown
    assert data["formats"]["trace"]["answer_length"] > data["formats"]["direct"]["answer_length"]
    assert "| answer format | masked diffusion | autoregressive |" in markdown
