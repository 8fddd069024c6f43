"""The Sudoku experiment (experiments/sudoku.py): puzzles are valid with exactly one solution (checked by an
independent brute-force solver), training samples keep that, and the `--quick` run writes well-formed results."""

import itertools
import json
import random
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import sudoku  # noqa: E402
from common import BOS, FIRST_FREE_ID  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def peers(box_rows: int, box_cols: int, i: int) -> set[int]:
    """Cells sharing a row, column or box with cell i (from coordinates, not the generator's tables)."""
    n = box_rows * box_cols
    r, c = divmod(i, n)
    result = {r * n + k for k in range(n)} | {k * n + c for k in range(n)}
    top, left = r - r % box_rows, c - c % box_cols
    result |= {(top + a) * n + left + b for a in range(box_rows) for b in range(box_cols)}
    return result - {i}


def brute_force_solutions(grid: list[int], box_rows: int, box_cols: int, limit: int = 2) -> list[list[int]]:
    """Every completion (up to `limit`): blanks filled in reading order, each digit checked against its peers."""
    n = box_rows * box_cols
    grid, found = list(grid), []
    blanks = [i for i, v in enumerate(grid) if v == 0]
    neighbours = {i: peers(box_rows, box_cols, i) for i in blanks}

    def search(k: int) -> None:
        if len(found) >= limit:
            return
        if k == len(blanks):
            found.append(list(grid))
            return
        i = blanks[k]
        for digit in range(1, n + 1):
            if all(grid[j] != digit for j in neighbours[i]):
                grid[i] = digit
                search(k + 1)
                grid[i] = 0

    search(0)
    return found


def is_valid_solution(grid: list[int], box_rows: int, box_cols: int) -> bool:
    n = box_rows * box_cols
    rows = [grid[r * n : (r + 1) * n] for r in range(n)]
    cols = [[grid[r * n + c] for r in range(n)] for c in range(n)]
    boxes = [
        [grid[(top + a) * n + left + b] for a in range(box_rows) for b in range(box_cols)]
        for top, left in itertools.product(range(0, n, box_rows), range(0, n, box_cols))
    ]
    return len(grid) == n * n and all(sorted(group) == list(range(1, n + 1)) for group in rows + cols + boxes)


def test_brute_force_solver_sees_multiple_solutions():
    """The checker itself can fail: an empty 4x4 grid has 288 solutions, a solved one exactly one."""
    assert len(brute_force_solutions([0] * 16, 2, 2, limit=1000)) == 288
    solution = brute_force_solutions([0] * 16, 2, 2, limit=1)[0]
    assert is_valid_solution(solution, 2, 2) and brute_force_solutions(solution, 2, 2) == [solution]
    broken = list(solution)
    broken[0], broken[1] = broken[1], broken[0]
    assert not is_valid_solution(broken, 2, 2)


@pytest.mark.parametrize("box_rows, box_cols, blanks, count", [(2, 2, 10, 20), (2, 3, 16, 10), (3, 3, 30, 2)])
def test_generator_puzzles_have_exactly_one_solution(box_rows, box_cols, blanks, count):
    generator = sudoku.SudokuGenerator(box_rows, box_cols)
    rng = random.Random(box_rows * 10 + box_cols)
    for _ in range(count):
        puzzle, solution = generator.puzzle(rng, blanks)
        assert sum(v == 0 for v in puzzle) == blanks
        assert is_valid_solution(solution, box_rows, box_cols)
        assert all(p in (0, s) for p, s in zip(puzzle, solution))
        assert brute_force_solutions(puzzle, box_rows, box_cols) == [solution]
        assert generator.count_solutions(puzzle) == 1


def test_generator_counts_multiple_solutions():
    generator = sudoku.SudokuGenerator(2, 3)
    solution = generator.random_solution(random.Random(0))
    assert is_valid_solution(solution, 2, 3)
    assert generator.count_solutions([0] * 36, limit=5) == 5
    assert generator.count_solutions(solution) == 1


def decode_grids(task: "sudoku.Sudoku", prompts: torch.Tensor, answers: torch.Tensor):
    assert (prompts[:, 0] == BOS).all() and (prompts[:, -1] == task.sep).all()
    cells = prompts[:, 1:-1]
    puzzles = torch.where(cells == sudoku.BLANK, torch.zeros_like(cells), cells - FIRST_FREE_ID)
    return puzzles.tolist(), (answers - FIRST_FREE_ID).tolist()


def test_training_samples_and_held_out_puzzles_are_valid_and_unique():
    task = sudoku.Sudoku(2, 3, blanks=16, pool_size=20, seed=0)
    prompts, answers = task.sample(24, torch.Generator().manual_seed(0))
    assert prompts.shape == (24, task.prompt_length) and answers.shape == (24, task.answer_length)
    puzzles, solutions = decode_grids(task, prompts, answers)
    pool = {tuple(p) for p in task.pool[0].tolist()}
    assert sum(tuple(p) not in pool for p in puzzles) >= 20  # the symmetries give new grids
    for puzzle, solution in zip(puzzles, solutions):
        assert sum(v == 0 for v in puzzle) == 16 and all(p in (0, s) for p, s in zip(puzzle, solution))
        assert is_valid_solution(solution, 2, 3)
        assert brute_force_solutions(puzzle, 2, 3) == [solution]
    held_out, held_out_answers = task.held_out(10, seed=1)
    held_out_puzzles, held_out_solutions = decode_grids(task, held_out, held_out_answers)
    assert not pool & {tuple(p) for p in held_out_puzzles}
    assert all(brute_force_solutions(p, 2, 3) == [s] for p, s in zip(held_out_puzzles, held_out_solutions))


def test_scores_exact_match_and_blank_cells():
    task = sudoku.Sudoku(2, 2, blanks=8, pool_size=4, seed=0)
    prompts, answers = task.held_out(2, seed=3)
    outputs = answers.clone()
    blank = (prompts[1, 1:-1] == sudoku.BLANK).nonzero()[0, 0]
    outputs[1, blank] = FIRST_FREE_ID + 1 + (answers[1, blank] - FIRST_FREE_ID) % 4  # another digit in one blank
    assert sudoku.scores(outputs, prompts, answers) == {"exact": 0.5, "cell": 15 / 16}


def test_quick_run_writes_results(tmp_path):
    assert sudoku.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    for suffix in ("md", "json", "png"):
        assert (tmp_path / f"sudoku.{suffix}").stat().st_size > 0
    assert (tmp_path / "sudoku.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "sudoku.md").read_text()
    assert markdown.startswith("# Sudoku") and "| model, decoding | exact match (%) |" in markdown
    data = json.loads((tmp_path / "sudoku.json").read_text())
    assert set(data["summary"]) == set(data["runs"]) == set(data["best_lr"]) == {"mdm", "ar", "mdm_rw"}
    assert set(data["sweep"]) == {"mdm", "ar"} and all(len(runs) == 2 for runs in data["sweep"].values())
    for variant, runs in data["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1] and all(r["lr"] == data["best_lr"][variant] for r in runs)
        assert all(0 <= data["summary"][variant][m]["mean"] <= 1 for m in ("exact", "cell"))
        assert all(r["loss_curve"] and r["loss_curve"][-1][0] == data["config"]["steps"] for r in runs)
    for variant in ("mdm", "mdm_rw"):
        assert 1 <= data["summary"][variant]["tokens_per_forward"]["mean"] <= data["config"]["blanks"] + 16
        assert 0 <= data["summary"][variant]["threshold_exact"]["mean"] <= 1
    assert "threshold_exact" not in data["summary"]["ar"] and data["best_lr"]["mdm_rw"] == data["best_lr"]["mdm"]


def test_paired_comparison_counts_signs_and_matches_a_hand_t_test():
    """Differences over the common seeds only; sign test and t statistic recomputed here from their definitions."""
    a = [{"seed": s, "exact": v} for s, v in zip([0, 1, 2, 3, 4, 9], [0.9, 0.8, 0.7, 0.95, 0.6, 0.1])]
    b = [{"seed": s, "exact": v} for s, v in zip([4, 3, 2, 1, 0], [0.5, 0.9, 0.6, 0.85, 0.8])]
    result = sudoku.paired(a, b)
    diffs = [0.9 - 0.8, 0.8 - 0.85, 0.7 - 0.6, 0.95 - 0.9, 0.6 - 0.5]
    assert result["seeds"] == [0, 1, 2, 3, 4] and result["diffs"] == pytest.approx(diffs)
    assert (result["wins"], result["losses"]) == (4, 1)
    assert result["sign_p"] == pytest.approx(2 * (1 + 5) / 2**5)  # P(<= 1 loss of 5 fair coins), both tails
    mean = sum(diffs) / 5
    sd = (sum((d - mean) ** 2 for d in diffs) / 4) ** 0.5
    assert result["diff"]["mean"] == pytest.approx(mean) and result["diff"]["std"] == pytest.approx(sd)
    stats = pytest.importorskip("scipy.stats")
    t = mean / (sd / 5**0.5)
    assert result["t"] == pytest.approx(t) and result["t_p"] == pytest.approx(2 * stats.t.sf(abs(t), 4))


@pytest.mark.slow
def test_more_seeds_at_the_picked_rates_reproduce_and_merge(tmp_path):
    """`--lrs-from` reruns a seed of the full run exactly (same settings, same picked rate, no re-pick); `--merge`
    reports the union with per-variant seed counts and the paired comparison; overlaps and other budgets refuse."""
    base = tmp_path / "sudoku.json"
    assert sudoku.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    full = json.loads(base.read_text())
    more = ["--quick", "--variants", "mdm,ar", "--lrs-from", str(base)]
    assert sudoku.main([*more, "--seeds", "1", "--seed-offset", "1", "--out-dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "sudoku_seeds1-1.json").read_text())
    for variant in ("mdm", "ar"):
        (rerun,), original = again["runs"][variant], full["runs"][variant][1]
        assert rerun["lr"] == full["best_lr"][variant] and rerun["seed"] == original["seed"] == 1
        assert all(rerun[k] == original[k] for k in ("exact", "cell", "final_loss", "threshold_cell") if k in original)
    assert sudoku.main([*more, "--seeds", "2", "--seed-offset", "2", "--out-dir", str(tmp_path / "part")]) == 0
    part = tmp_path / "part" / "sudoku_seeds2-3.json"
    assert sudoku.main(["--merge", str(base), str(part), "--out-dir", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "sudoku.json").read_text())
    assert {v: [r["seed"] for r in rs] for v, rs in merged["runs"].items()} == {
        "mdm": [0, 1, 2, 3], "ar": [0, 1, 2, 3], "mdm_rw": [0, 1]}  # fmt: skip
    assert merged["summary"]["mdm"]["exact"]["n"] == 4 and merged["paired"]["seeds"] == [0, 1, 2, 3]
    assert "Paired comparison" in (tmp_path / "merged" / "sudoku.md").read_text()
    with pytest.raises(SystemExit, match="overlap"):
        sudoku.merge([str(base), str(part), str(part)])
    with pytest.raises(SystemExit, match="blanks"):
        sudoku.main([*more, "--blanks", "9", "--out-dir", str(tmp_path / "other")])
