"""Countdown experiment (issue 16, item 2): the generator only makes solvable problems, the checker accepts any valid
path and nothing else, and the `--quick` run writes well-formed results."""

import json
import random
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import countdown  # noqa: E402
from common import BOS, EOS, MASK  # noqa: E402
from countdown import Countdown, check_path  # noqa: E402


def moves(pool: list[int]):
    """(equation text, remaining pool) for every pair of pool entries in both orders and every operation whose result
    is a non-negative integer (exact rational arithmetic), written independently of the experiment."""
    for i in range(len(pool)):
        for j in range(len(pool)):
            if i == j:
                continue
            x, y = Fraction(pool[i]), Fraction(pool[j])
            for op, value in (("+", x + y), ("-", x - y), ("*", x * y), ("/", x / y if y else None)):
                if value is not None and value >= 0 and value.denominator == 1:
                    rest = [v for k, v in enumerate(pool) if k not in (i, j)] + [int(value)]
                    yield f"{pool[i]}{op}{pool[j]}={int(value)}", rest


def solutions(pool: list[int], target: int) -> list[str]:
    """Every path (as text) by brute force."""
    if len(pool) == 1:
        return [""] if pool[0] == target else []
    return [step + ("," + tail if tail else "") for step, rest in moves(pool) for tail in solutions(rest, target)]


def solvable(pool: list[int], target: int) -> bool:
    """Is there at least one path (depth-first, stops at the first)?"""
    if len(pool) == 1:
        return pool[0] == target
    return any(solvable(rest, target) for _, rest in moves(pool))


@pytest.mark.parametrize("operands, max_operand, max_value, count", [(3, 20, 100, 300), (4, 10, 60, 60)])
def test_every_generated_problem_is_solvable(operands, max_operand, max_value, count):
    task = Countdown(operands, max_operand, max_value)
    for numbers, target, path in task.problems(count, seed=3):
        assert len(numbers) == operands and all(1 <= n <= max_operand for n in numbers)
        assert 1 <= target <= max_value
        assert solvable(numbers, target), (numbers, target)
        if operands == 3:
            assert path in solutions(numbers, target)  # the generator's own path is one of them
        assert check_path(numbers, target, path)
    # The training sampler draws from the same generator: decode its tensors back and search again.
    prompts, answers = task.sample(64, torch.Generator().manual_seed(0))
    assert prompts.shape == (64, task.prompt_length) and answers.shape == (64, task.answer_length)
    for prompt in prompts.tolist()[:16]:
        values = [t - countdown.FIRST_VALUE for t in prompt if t >= countdown.FIRST_VALUE]
        assert solvable(values[:-1], values[-1])


def test_checker_accepts_any_valid_path_and_nothing_else():
    # The paper's example and an alternative path to the same target.
    assert check_path([15, 44, 79], 50, "44-15=29,79-29=50")
    assert check_path([15, 44, 79], 50, "79-44=35,35+15=50")
    assert check_path([15, 44, 79], 50, "15+79=94,94-44=50")  # smaller operand first is fine too
    # CD4 with two independent sub-results combined last.
    assert check_path([2, 3, 4, 5], 45, "2+3=5,4+5=9,5*9=45")
    assert not check_path([15, 44, 79], 50, "44-15=28,79-28=51")  # wrong arithmetic (consistently carried)
    assert not check_path([15, 44, 79], 50, "44+15=29,79-29=50")  # wrong arithmetic, right target
    assert not check_path([2, 6, 9], 24, "6*2=12,12*2=24")  # 2 reused, 9 unused
    assert not check_path([2, 6, 9], 12, "6*2=12")  # 9 unused
    assert not check_path([2, 6, 9], 21, "6*2=12,12+9=21,21-2=19")  # more equations than numbers allow
    assert not check_path([2, 6, 9], 24, "6*2=12,12+9=21")  # valid arithmetic, wrong target
    assert check_path([2, 6, 9], 6, "6/2=3,9-3=6")
    assert not check_path([2, 6, 9], 9, "6/2=3,3*3=9")  # the intermediate 3 used twice, 9 unused
    assert not check_path([2, 6, 9], 4, "9/2=4,6-2=4")  # inexact division
    assert not check_path([2, 6, 9], 17, "6*2=12,12+5=17")  # 5 is not a given number
    assert not check_path([2, 6, 9], 21, "6*2=12;12+9=21")  # malformed
    assert not check_path([2, 6, 9], 21, "")


def test_checker_accepts_alternative_paths_found_by_search():
    task = Countdown(3, 20, 100)
    rng, checked = random.Random(1), 0
    for numbers, target, path in task.problems(200, seed=7):
        paths = solutions(numbers, target)
        others = [p for p in paths if p != path]
        if others:
            assert check_path(numbers, target, rng.choice(others))
            checked += 1
        # A wrong target is rejected for every valid path of the problem.
        assert not any(check_path(numbers, target + 1, p) for p in paths if target + 1 not in numbers)
    assert checked > 50


def test_tokens_round_trip_and_held_out_problems_never_train():
    task = Countdown(3, 20, 100)
    test = task.problems(200, seed=10)
    task.excluded = {task.key(n, t) for n, t, _ in test}
    prompts, answers = task.tensors(test)
    assert [task.decode_answer(a) for a in answers.tolist()] == [p for _, _, p in test]
    assert task.decode_answer([MASK, BOS, EOS, countdown.FIRST_VALUE]) == "??"  # stops at EOS
    generator, seen = torch.Generator().manual_seed(0), set()
    for _ in range(20):
        prompts, _ = task.sample(256, generator)
        for prompt in prompts.tolist():
            values = [t - countdown.FIRST_VALUE for t in prompt if t >= countdown.FIRST_VALUE]
            seen.add(task.key(values[:-1], values[-1]))
    assert not seen & task.excluded
    # The exclusion is not vacuous: without it, fresh problems often repeat held-out ones.
    task.excluded = set()
    unfiltered = {task.key(n, t) for n, t, _ in task.problems(5000, seed=99)}
    assert unfiltered & {task.key(n, t) for n, t, _ in test}


def test_quick_run_writes_results(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert countdown.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "countdown.json").read_text())
    assert (tmp_path / "countdown.png").stat().st_size > 0
    assert set(data["summary"]) == set(data["runs"]) == {"mdm", "ar", "mdm_reweighted"}
    for name, runs in data["runs"].items():
        assert len(runs) == data["config"]["seeds"]
        assert data["summary"][name]["accuracy"]["n"] == len(runs)
        assert all(0.0 <= r["accuracy"] <= 1.0 and r["lr"] == data["best_lr"][name] for r in runs)
    assert all(r["gamma"] == 2.0 for r in data["runs"]["mdm_reweighted"])
    for kind in ("mdm", "ar"):  # the learning rate comes from the validation sweep
        sweep = data["sweep"][kind]
        assert len(sweep) == 2 and all(0.0 <= r["validation_accuracy"] <= 1.0 for r in sweep)
        assert data["best_lr"][kind] in [r["lr"] for r in sweep]
        assert data["runs"][kind][0]["loss_curve"] and data["runs"][kind][0]["seed"] == 0
    for name in ("mdm", "mdm_reweighted"):
        tokens_per_forward = data["summary"][name]["threshold_tokens_per_forward"]["mean"]
        assert 1.0 <= tokens_per_forward <= Countdown().answer_length
    markdown = (tmp_path / "countdown.md").read_text()
    assert "| model / decoding | exact match (%) | tokens / forward | lr |" in markdown
    assert "AR twin" in markdown and "token reweighting" in markdown
