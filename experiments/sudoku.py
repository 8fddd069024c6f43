"""Sudoku: fill a grid under row, column and box constraints (Ye et al. 2025, "Beyond Autoregression").

A local generator makes puzzles with a UNIQUE solution: a random complete grid (randomised backtracking), then cells
are blanked in random order, each only if the puzzle keeps exactly one solution (a bitmask solver counts solutions up
to two). Training draws from a fixed pool of such puzzles, each drawn through a random validity- and uniqueness-
preserving symmetry (digit relabelling, rows within a band, bands, columns within a stack, stacks), so the models see
fresh grids every step; validation and test puzzles are generated separately (none in the training pool).

Format (one token per cell, row-major): the prompt is the puzzle, the answer the full solution grid

    <bos> 3 _ 1 _ 6 2  _ 5 ... 4 <sep> 3 4 1 5 6 2  2 5 ... 4

The full grid rather than the blanks' values: answer cell i then sits at a fixed offset from prompt cell i, so the
model does not have to count blanks to know which cell a token belongs to (the blanks-only answer would add that
indexing problem on top of Sudoku), and exact match of the whole grid is the paper's metric. Copying the givens is
easy; per-cell accuracy is reported on the blank cells only.

Models (same backbone, batches, budget and training loop, `experiments.common`): the masked diffusion model (MDM),
decoded easy-first (low-confidence remasking, one token per step) and with a confidence threshold (every masked token
with probability >= tau per forward, one puzzle at a time: tokens per forward reported); the autoregressive twin (AR)
writes the grid in row-major order, greedy; an ablation row trains the MDM with token-level reweighting (focal form of
Ye et al.'s adaptive weight, gamma 2). Learning rate per model from a sweep on a validation set (seed 0), then the
other seeds at that rate; test = held-out puzzles.

    python experiments/sudoku.py --seeds 2
    python experiments/sudoku.py --seeds 3 --seed-offset 2 --variants mdm,ar --steps 1200 --lrs 2e-3,4e-3 \
        --lrs-from experiments/results/sudoku_seeds0-1.json --out-dir /tmp/part   # more seeds at the picked rates
    python experiments/sudoku.py --merge experiments/results/sudoku_seeds0-1.json /tmp/part/sudoku_seeds2-4.json

A merged report adds a paired comparison of MDM and AR over their common seeds (per-seed difference, exact sign
test, paired t-test).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    BOS,
    FIRST_FREE_ID,
    Backbone,
    ar_decode,
    build_model,
    common_arguments,
    fmt_pct,
    markdown_table,
    mdm_decode,
    mean_std,
    new_figure,
    setup,
    sft_batches,
    train,
    write_results,
)

BLANK = FIRST_FREE_ID  # digit d (1..n) is token FIRST_FREE_ID + d; SEP follows the digits


class SudokuGenerator:
    """n x n Sudoku with boxes of `box_rows` x `box_cols` cells (n = box_rows * box_cols); grids are flat row-major
    lists of n * n ints, 0 for a blank."""

    def __init__(self, box_rows: int, box_cols: int) -> None:
        self.box_rows, self.box_cols = box_rows, box_cols
        self.n = n = box_rows * box_cols
        self.cells = n * n
        self.all_digits = (1 << n) - 1
        self.row = [i // n for i in range(n * n)]
        self.col = [i % n for i in range(n * n)]
        self.box = [(i // n) // box_rows * box_rows + (i % n) // box_cols for i in range(n * n)]

    def _masks(self, grid: list[int]) -> tuple[list[int], list[int], list[int]]:
        rows, cols, boxes = [0] * self.n, [0] * self.n, [0] * self.n
        for i, value in enumerate(grid):
            if value:
                bit = 1 << (value - 1)
                rows[self.row[i]] |= bit
                cols[self.col[i]] |= bit
                boxes[self.box[i]] |= bit
        return rows, cols, boxes

    def count_solutions(self, grid: list[int], limit: int = 2) -> int:
        """Number of completions of `grid`, counted up to `limit` (backtracking, fewest candidates first)."""
        rows, cols, boxes = self._masks(grid)
        empty = [i for i, value in enumerate(grid) if not value]
        row, col, box, all_digits = self.row, self.col, self.box, self.all_digits

        def search() -> int:
            if not empty:
                return 1
            best, best_free, best_count = -1, 0, self.n + 1
            for k, i in enumerate(empty):
                free = all_digits & ~(rows[row[i]] | cols[col[i]] | boxes[box[i]])
                count = free.bit_count()
                if count < best_count:
                    best, best_free, best_count = k, free, count
                    if count <= 1:
                        break
            if best_count == 0:
                return 0
            i = empty.pop(best)
            total = 0
            while best_free and total < limit:
                bit = best_free & -best_free
                best_free ^= bit
                rows[row[i]] ^= bit
                cols[col[i]] ^= bit
                boxes[box[i]] ^= bit
                total += search()
                rows[row[i]] ^= bit
                cols[col[i]] ^= bit
                boxes[box[i]] ^= bit
            empty.insert(best, i)
            return min(total, limit)

        return search()

    def random_solution(self, rng: random.Random) -> list[int]:
        """A complete valid grid: cells filled row-major with digits tried in random order (backtracking)."""
        grid = [0] * self.cells
        rows, cols, boxes = [0] * self.n, [0] * self.n, [0] * self.n
        row, col, box = self.row, self.col, self.box

        def fill(i: int) -> bool:
            if i == self.cells:
                return True
            free = self.all_digits & ~(rows[row[i]] | cols[col[i]] | boxes[box[i]])
            digits = [d for d in range(self.n) if free >> d & 1]
            rng.shuffle(digits)
            for d in digits:
                bit = 1 << d
                rows[row[i]] ^= bit
                cols[col[i]] ^= bit
                boxes[box[i]] ^= bit
                grid[i] = d + 1
                if fill(i + 1):
                    return True
                rows[row[i]] ^= bit
                cols[col[i]] ^= bit
                boxes[box[i]] ^= bit
            grid[i] = 0
            return False

        fill(0)
        return grid

    def puzzle(self, rng: random.Random, blanks: int) -> tuple[list[int], list[int]]:
        """(puzzle, solution): exactly `blanks` blank cells and exactly one solution. Cells are blanked in random
        order, each only if the solution stays unique; a grid that cannot reach `blanks` is discarded."""
        while True:
            solution = self.random_solution(rng)
            grid = list(solution)
            order = list(range(self.cells))
            rng.shuffle(order)
            removed = 0
            for i in order:
                grid[i] = 0
                if self.count_solutions(grid) == 1:
                    removed += 1
                    if removed == blanks:
                        return grid, solution
                else:
                    grid[i] = solution[i]


class Sudoku:
    """The task: prompts `<bos> cells <sep>` (blank = BLANK token), answers the full solution grid."""

    def __init__(self, box_rows: int, box_cols: int, blanks: int, pool_size: int, seed: int = 0) -> None:
        self.generator = SudokuGenerator(box_rows, box_cols)
        self.box_rows, self.box_cols, self.blanks = box_rows, box_cols, blanks
        self.n, self.cells = self.generator.n, self.generator.cells
        self.sep = FIRST_FREE_ID + self.n + 1
        self.vocab_size = self.sep + 1
        self.prompt_length = self.cells + 2
        self.answer_length = self.cells
        self.pool = self.generate(pool_size, seed)

    def generate(self, count: int, seed: int, exclude: set | None = None) -> tuple[torch.LongTensor, torch.LongTensor]:
        """`count` distinct puzzles (none of them in `exclude`) as (puzzles (N, cells), solutions (N, cells))."""
        rng, seen, puzzles, solutions = random.Random(seed), set(exclude or ()), [], []
        while len(puzzles) < count:
            puzzle, solution = self.generator.puzzle(rng, self.blanks)
            if tuple(puzzle) not in seen:
                seen.add(tuple(puzzle))
                puzzles.append(puzzle)
                solutions.append(solution)
        return torch.tensor(puzzles), torch.tensor(solutions)

    def held_out(self, count: int, seed: int) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(prompts, answers) of `count` new puzzles, none of them in the training pool."""
        pool = {tuple(p) for p in self.pool[0].tolist()}
        return self.encode(*self.generate(count, seed, exclude=pool))

    def encode(self, puzzles: torch.LongTensor, solutions: torch.LongTensor) -> tuple[torch.LongTensor, ...]:
        batch = puzzles.shape[0]
        cells = torch.where(puzzles > 0, puzzles + FIRST_FREE_ID, torch.full_like(puzzles, BLANK))
        prompts = torch.cat([torch.full((batch, 1), BOS), cells, torch.full((batch, 1), self.sep)], dim=1)
        return prompts, solutions + FIRST_FREE_ID

    def augment(self, puzzles: torch.LongTensor, solutions: torch.LongTensor, generator: torch.Generator):
        """A random symmetry per grid (digit relabelling, row and column permutations that keep the bands and stacks):
        valid grids stay valid and a unique solution stays unique."""
        batch, n, br, bc = puzzles.shape[0], self.n, self.box_rows, self.box_cols

        def line_permutation(block: int) -> torch.LongTensor:  # (B, n): blocks shuffled, lines shuffled in a block
            blocks = n // block
            block_order = torch.rand(batch, blocks, generator=generator).argsort(-1)
            within = torch.rand(batch, blocks, block, generator=generator).argsort(-1)
            return (block_order[:, :, None] * block + within).flatten(1)

        rows, cols = line_permutation(br), line_permutation(bc)
        digits = torch.cat([torch.zeros(batch, 1, dtype=torch.long), torch.rand(batch, n, generator=generator)
                            .argsort(-1) + 1], dim=1)  # fmt: skip

        def apply(grids: torch.LongTensor) -> torch.LongTensor:
            grids = grids.view(batch, n, n)
            grids = grids.gather(1, rows[:, :, None].expand(-1, -1, n)).gather(2, cols[:, None, :].expand(-1, n, -1))
            return digits.gather(1, grids.flatten(1))

        return apply(puzzles), apply(solutions)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(prompts, answers): pool puzzles through random symmetries."""
        index = torch.randint(len(self.pool[0]), (batch_size,), generator=generator)
        return self.encode(*self.augment(self.pool[0][index], self.pool[1][index], generator))

    def batches(self, batch_size: int, seed: int, seen: set | None = None):
        """Training batches; `seen` (if given) collects every training prompt, to count test puzzles seen in
        training (small grids have few distinct puzzles)."""
        record = None if seen is None else (lambda prompts: seen.update(row.tobytes() for row in prompts.numpy()))
        return sft_batches(self, batch_size, seed, on_prompts=record)


def scores(outputs: torch.LongTensor, prompts: torch.LongTensor, answers: torch.LongTensor) -> dict[str, float]:
    """Exact match of the whole grid, and per-cell accuracy on the blank cells."""
    blank = prompts[:, 1:-1] == BLANK
    correct = outputs == answers
    return {"exact": float(correct.all(-1).float().mean()), "cell": float(correct[blank].float().mean())}


def evaluate(
    model,
    kind: str,
    task: Sudoku,
    prompts,
    answers,
    threshold: float | None = None,
    batch_size: int = 250,
    forward_puzzles: int = 100,
) -> dict[str, float]:
    """AR: greedy row-major. MDM: easy-first one token per step; with `threshold` also confidence-threshold
    decoding."""
    outputs = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        if kind == "mdm":
            outputs.append(mdm_decode(model, batch, task.answer_length)[0])
        else:
            outputs.append(ar_decode(model, batch, task.answer_length))
    record = scores(torch.cat(outputs), prompts, answers)
    if kind == "mdm" and threshold is not None:
        outputs = [mdm_decode(model, prompts[i : i + batch_size], task.answer_length, threshold=threshold)[0]
                   for i in range(0, len(prompts), batch_size)]  # fmt: skip
        threshold_scores = scores(torch.cat(outputs), prompts, answers)
        # Rows do not interact, so batching changes only the count of forwards (a batch runs until its slowest row
        # is done): the forwards per puzzle come from decoding the first `forward_puzzles` one at a time.
        forwards = [mdm_decode(model, prompts[i : i + 1], task.answer_length, threshold=threshold)[1]
                    for i in range(min(forward_puzzles, len(prompts)))]  # fmt: skip
        record.update(threshold_exact=threshold_scores["exact"], threshold_cell=threshold_scores["cell"],
                      threshold_forwards=statistics.fmean(forwards),
                      tokens_per_forward=task.answer_length / statistics.fmean(forwards))  # fmt: skip
    return record


def run_one(variant: str, seed: int, lr: float, args, task: Sudoku, test, validation=None) -> dict:
    """Train one model (variant "mdm", "ar" or "mdm_rw") and score it (the loss curve comes from train())."""
    kind, seed = "ar" if variant == "ar" else "mdm", seed + args.seed_offset
    gamma = args.reweight_gamma if variant == "mdm_rw" else 0.0
    model = build_model(Backbone(**args.backbone), task.vocab_size, task.prompt_length + task.answer_length, seed)
    seen = set()
    record = train(model, kind, task.batches(args.batch_size, seed, seen), args.steps, lr, seed,
                   warmup=min(100, args.steps // 10), log_every=args.log_every, reweight_gamma=gamma)  # fmt: skip
    start = time.time()
    record.update(evaluate(model, kind, task, *test, threshold=args.threshold))
    record["test_seen_in_training"] = statistics.fmean(row.tobytes() in seen for row in test[0].numpy())
    if validation is not None:
        record.update({f"validation_{k}": v for k, v in evaluate(model, kind, task, *validation).items()})
    record.update(variant=variant, seed=seed, lr=lr, eval_s=round(time.time() - start, 1))
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in record.items() if k not in ("variant", "seed", "lr", "loss_curve"))  # fmt: skip
    print(f"  {variant} seed {seed} lr {lr:g}: {shown}", flush=True)
    return record


def select(runs: list[dict]) -> dict:
    """Validation exact match, then validation per-cell accuracy, then training loss (never the test set)."""
    return max(runs, key=lambda r: (r["validation_exact"], r["validation_cell"], -r["final_loss"]))


VARIANTS = {"mdm": "MDM", "ar": "AR (row-major)", "mdm_rw": "MDM + reweighting"}


def run_all(task: Sudoku, args) -> dict:
    """Seed 0 at every lr of the sweep for the MDM and the AR twin; the reweighted MDM sweeps `--rw-lrs` (default: the
    MDM's selected lr); then seeds 1.. at the selected lr."""
    test = task.held_out(args.test_size, seed=10_000)
    validation = task.held_out(args.validation_size, seed=20_000)
    lrs = {"mdm": args.lrs, "ar": args.lrs}
    sweep, runs, best_lr = {}, {}, {}
    for variant in args.variants:
        candidates = lrs.get(variant) or args.rw_lrs or [best_lr["mdm"]]
        if len(candidates) > 1:
            sweep[variant] = [run_one(variant, 0, lr, args, task, test, validation) for lr in candidates]
            best = select(sweep[variant])
        elif variant == "mdm_rw" and candidates[0] == best_lr.get("mdm"):
            best = run_one(variant, 0, candidates[0], args, task, test)
        else:
            best = run_one(variant, 0, candidates[0], args, task, test, validation)
        best_lr[variant] = best["lr"]
        runs[variant] = [best] + [run_one(variant, s, best["lr"], args, task, test) for s in range(1, args.seeds)]
    return {"sweep": sweep, "runs": runs, "best_lr": best_lr, "summary": summarise(runs)}


METRICS = ["exact", "cell", "threshold_exact", "threshold_cell", "tokens_per_forward", "final_loss"]
# Settings that must agree for runs to be reported together (everything that shapes training and scoring).
BUDGET = ("box_rows", "box_cols", "blanks", "pool_size", "steps", "batch_size", "reweight_gamma", "threshold",
          "backbone", "test_size")  # fmt: skip


def summarise(runs: dict[str, list[dict]]) -> dict:
    return {v: {m: mean_std([r[m] for r in rs]) for m in METRICS if m in rs[0]} for v, rs in runs.items() if rs}


def run_more_seeds(task: Sudoku, args, command: str, path: Path) -> dict:
    """Seeds `--seed-offset`.. of `--variants` at the learning rates that `--lrs-from`'s seed-0 validation sweep
    selected (never re-picked on these seeds), seed by seed (MDM and AR of a seed next to each other, so a cut-short
    run still holds pairs); the part file is rewritten after every run."""
    source = json.loads(Path(args.lrs_from).read_text())
    mismatch = [k for k in BUDGET if source["config"][k] != vars(args)[k]]
    if mismatch:
        raise SystemExit(f"--lrs-from: {mismatch} differ from {args.lrs_from}")
    test = task.held_out(args.test_size, seed=10_000)
    data = {"command": command, "lrs_from": args.lrs_from, "best_lr": source["best_lr"],
            "config": {k: v for k, v in vars(args).items() if k not in ("out_dir", "merge")},
            "runs": {v: [] for v in args.variants}}  # fmt: skip
    start, cpu = time.time(), time.process_time()
    for s in range(args.seeds):
        for variant in args.variants:
            data["runs"][variant].append(run_one(variant, s, source["best_lr"][variant], args, task, test))
            data.update(wall_s=round(time.time() - start, 1), cpu_s=round(time.process_time() - cpu, 1),
                        summary=summarise(data["runs"]))  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def merge(paths: list[str]) -> dict:
    """One result from a full run (with its learning-rate sweep) and parts over other seeds at the same rates."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    base = next((p for p in parts if p.get("sweep")), None)
    if base is None:
        raise SystemExit("--merge: one file must be a full run (with the seed-0 learning-rate sweep)")
    for part in parts:
        mismatch = [k for k in BUDGET if part["config"][k] != base["config"][k]]
        if mismatch or part["best_lr"] != base["best_lr"]:
            raise SystemExit(f"--merge: {mismatch or 'best_lr'} differ between {paths[0]} and the others")
    runs = {v: [r for part in parts for r in part["runs"].get(v, [])] for v in base["runs"]}
    for variant, records in runs.items():
        seeds = [r["seed"] for r in records]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--merge: {variant} seeds overlap ({sorted(seeds)})")
        records.sort(key=lambda r: r["seed"])
    config = dict(base["config"], seeds={v: len(rs) for v, rs in runs.items()}, merged=paths)
    return {"command": " and ".join(p["command"] for p in parts), "wall_s": round(sum(p["wall_s"] for p in parts), 1),
            "cpu_s": round(sum(p["cpu_s"] for p in parts), 1), "config": config, "sweep": base["sweep"],
            "runs": runs, "best_lr": base["best_lr"], "summary": summarise(runs),
            "paired": paired(runs["mdm"], runs["ar"])}  # fmt: skip


def paired(a: list[dict], b: list[dict], metric: str = "exact") -> dict:
    """a - b over the seeds both have: per-seed differences, mean ± sample std, the exact two-sided sign test (ties
    dropped) and the paired t-test (scipy, if installed)."""
    by_seed = {r["seed"]: r[metric] for r in b}
    seeds = sorted(r["seed"] for r in a if r["seed"] in by_seed)
    diffs = [next(r[metric] for r in a if r["seed"] == s) - by_seed[s] for s in seeds]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    n = wins + losses
    sign_p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0
    result = {"metric": metric, "seeds": seeds, "diffs": diffs, "wins": wins, "losses": losses, "sign_p": sign_p,
              **({"diff": mean_std(diffs)} if diffs else {})}  # fmt: skip
    try:
        from scipy import stats
    except ImportError:
        return result
    if len(diffs) > 1:
        test = stats.ttest_1samp(diffs, 0.0)
        result.update(t=float(test.statistic), t_p=float(test.pvalue))
    return result


def paired_text(p: dict) -> str:
    rows = [[s, f"{100 * d:+.1f}"] for s, d in zip(p["seeds"], p["diffs"])]
    d = p["diff"]
    t = f"; paired t = {p['t']:.2f}, two-sided p = {p['t_p']:.2g}" if "t_p" in p else ""
    return (
        f"\nPaired comparison, MDM (easy-first) − AR, test exact match, over the {len(p['seeds'])} seeds both have "
        f"(same seed: same initialisation seed and batch order):\n\n"
        + markdown_table(["seed", "MDM − AR (points)"], rows)
        + f"\nMean difference {100 * d['mean']:+.1f} ± {100 * d['std']:.1f} points (sample std); MDM ahead on "
        f"{p['wins']} seeds, behind on {p['losses']}; exact sign test p = {p['sign_p']:.2g}{t}.\n"
    )


def report(task: Sudoku, result: dict, args, command: str, wall: float, cpu: float) -> str:
    summary, tau = result["summary"], args.threshold
    rows = []
    for variant in ("mdm", "mdm_rw"):
        s = summary[variant]
        rows.append([f"{VARIANTS[variant]}, easy-first (1 token / forward)", fmt_pct(s["exact"]), fmt_pct(s["cell"]),
                     "1.00"])  # fmt: skip
        rows.append([f"{VARIANTS[variant]}, threshold {tau:g}", fmt_pct(s["threshold_exact"]),
                     fmt_pct(s["threshold_cell"]),
                     f"{s['tokens_per_forward']['mean']:.2f} ± {s['tokens_per_forward']['std']:.2f}"])  # fmt: skip
    s = summary["ar"]
    rows.insert(2, [f"{VARIANTS['ar']}, greedy", fmt_pct(s["exact"]), fmt_pct(s["cell"]), "1.00"])
    seed_rows = [
        [VARIANTS[v], r["seed"], f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['exact']:.1f}",
         f"{100 * r['cell']:.1f}", f"{100 * r['threshold_exact']:.1f}" if "threshold_exact" in r else "",
         r["train_s"], r["eval_s"]]
        for v in VARIANTS for r in result["runs"][v]
    ]  # fmt: skip
    b = args.backbone
    counts = {v: len(rs) for v, rs in result["runs"].items()}
    seed_counts = (f"{counts['mdm']} seed(s)" if len(set(counts.values())) == 1
                   else ", ".join(f"{n} seeds ({VARIANTS[v]})" for v, n in counts.items()))  # fmt: skip
    text = (
        f"# Sudoku {task.n}x{task.n} ({task.box_rows}x{task.box_cols} boxes)\n\n`{command}` ({wall:.0f} s wall, "
        f"{cpu:.0f} s CPU, {args.threads} thread(s), on a CPU shared with other jobs)\n\n"
        f"Puzzles with {task.blanks} blanks ({task.cells - task.blanks} givens) and a unique solution; training pool "
        f"{args.pool_size} puzzles through random symmetries; {args.validation_size} validation and {args.test_size} "
        f"held-out test puzzles (none in the pool). Backbone {b['hidden_size']} wide, {b['num_hidden_layers']} "
        f"layers, {b['num_attention_heads']} heads; {args.steps} steps x batch {args.batch_size}; answer = the full "
        f"grid ({task.answer_length} tokens). Mean ± sample std over {seed_counts} at each model's selected "
        f"learning rate (MDM {result['best_lr']['mdm']:g}, AR {result['best_lr']['ar']:g}, MDM + reweighting "
        f"{result['best_lr']['mdm_rw']:g}, gamma {args.reweight_gamma:g}). Exact match: the whole grid; per cell: the "
        f"blank cells. Test puzzles that also occurred in a run's training batches (exactly, after the symmetries): "
        f"{100 * statistics.fmean(r['test_seen_in_training'] for rs in result['runs'].values() for r in rs):.1f} % "
        "on average.\n\n"
        + markdown_table(["model, decoding", "exact match (%)", "per blank cell (%)", "tokens / forward"], rows)
        + f"\nTokens / forward of the threshold rows: {task.answer_length} answer tokens over the forwards, each of "
        "the first 100 test puzzles decoded alone (accuracy: all test puzzles, batched; rows do not interact).\n"
        + "\nPer seed:\n\n"
        + markdown_table(
            [
                "model",
                "seed",
                "lr",
                "final loss",
                "exact",
                "per cell",
                f"exact, threshold {tau:g}",
                "train s",
                "eval s",
            ],
            seed_rows,
        )  # fmt: skip
    )
    if "paired" in result:
        text += paired_text(result["paired"])
    if result["sweep"]:
        sweep_rows = [
            [VARIANTS[v], f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['validation_exact']:.1f}",
             f"{100 * r['validation_cell']:.1f}", "**selected**" if r["lr"] == result["best_lr"][v] else ""]
            for v, rs in result["sweep"].items() for r in rs
        ]  # fmt: skip
        text += (
            "\nLearning-rate sweep (seed 0; selected by validation exact match, then validation per-cell accuracy, "
            "then training loss):\n\n"
            + markdown_table(["model", "lr", "final loss", "validation exact", "validation per cell", ""], sweep_rows)
        )
    return text


def plot(result: dict, tau: float, title: str):
    fig, axes = new_figure(ncols=2, width=5.0)
    ax = axes[0][0]
    bars = [("MDM\neasy-first", "mdm", "exact"), (f"MDM\nthr {tau:g}", "mdm", "threshold_exact"),
            ("AR\nrow-major", "ar", "exact"), ("MDM+rw\neasy-first", "mdm_rw", "exact"),
            (f"MDM+rw\nthr {tau:g}", "mdm_rw", "threshold_exact")]  # fmt: skip
    colors = ["tab:blue", "tab:cyan", "tab:orange", "tab:green", "lightgreen"]
    for i, ((_, variant, metric), color) in enumerate(zip(bars, colors)):
        stats = result["summary"][variant][metric]
        ax.bar(i, 100 * stats["mean"], 0.6, yerr=100 * stats["std"], color=color)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("test exact match (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax = axes[0][1]
    for variant, color in (("mdm", "tab:blue"), ("ar", "tab:orange"), ("mdm_rw", "tab:green")):
        for j, r in enumerate(result["runs"][variant]):
            if r["loss_curve"]:
                steps, losses = zip(*r["loss_curve"])
                ax.plot(steps, losses, color=color, alpha=0.9 if j == 0 else 0.4,
                        label=VARIANTS[variant] if j == 0 else None)  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (mean over log interval)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("loss curves, all seeds (each model's own objective)", fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, seeds=2)
    parser.add_argument("--box-rows", type=int, default=2)
    parser.add_argument("--box-cols", type=int, default=2)
    parser.add_argument("--blanks", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lrs", default="3e-3,1e-2", help="learning-rate sweep (MDM and AR, seed 0, validation)")
    parser.add_argument("--rw-lrs", default="", help="sweep for MDM + reweighting (default: the MDM's selected lr)")
    parser.add_argument("--reweight-gamma", type=float, default=2.0)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--validation-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--variants", default="mdm,ar,mdm_rw", help="subset for pilots (the report needs all three)")
    parser.add_argument("--seed-offset", type=int, default=0, help="pilots: seeds start here")
    parser.add_argument("--lrs-from", metavar="JSON", help="more seeds at the rates this full run selected (no sweep)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="one report from a full run and --lrs-from parts")
    args = parser.parse_args(argv)
    if args.merge:
        data = merge(args.merge)
        run_args = argparse.Namespace(**dict(data["config"], seeds=max(data["config"]["seeds"].values())))
        task = Sudoku(run_args.box_rows, run_args.box_cols, run_args.blanks, 1, seed=0)
        markdown = report(task, data, run_args, data["command"], data["wall_s"], data["cpu_s"])
        title = f"Sudoku {task.n}x{task.n}, {task.blanks} blanks ({run_args.seeds} seeds MDM / AR)"
        write_results("sudoku", markdown, data, plot(data, run_args.threshold, title), Path(args.out_dir))
        return 0
    if args.quick:
        args.steps, args.batch_size, args.pool_size, args.lrs, args.log_every = 4, 8, 30, "3e-3,1e-2", 2
        args.seeds, args.test_size, args.validation_size = min(args.seeds, 2), 6, 4
        args.hidden_size, args.layers = 32, 1
    args.variants = args.variants.split(",")
    args.lrs = [float(x) for x in args.lrs.split(",") if x]
    args.rw_lrs = [float(x) for x in args.rw_lrs.split(",") if x]
    args.backbone = dict(hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=4,
                         intermediate_size=3 * args.hidden_size)  # fmt: skip
    setup(args.threads)
    command = "python experiments/sudoku.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start, cpu_start = time.time(), time.process_time()
    task = Sudoku(args.box_rows, args.box_cols, args.blanks, args.pool_size, seed=0)
    print(f"sudoku {task.n}x{task.n}, {args.blanks} blanks: pool of {args.pool_size} in {time.time() - start:.1f} s",
          flush=True)  # fmt: skip
    if args.lrs_from:
        last = args.seed_offset + args.seeds - 1
        run_more_seeds(task, args, command, Path(args.out_dir) / f"sudoku_seeds{args.seed_offset}-{last}.json")
        return 0
    result = run_all(task, args)
    if len(args.variants) < 3:
        print(result["summary"])
        return 0
    wall, cpu = round(time.time() - start, 1), round(time.process_time() - cpu_start, 1)
    markdown = report(task, result, args, command, wall, cpu)
    figure = plot(result, args.threshold, f"Sudoku {task.n}x{task.n}, {args.blanks} blanks ({args.seeds} seeds)")
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    data = {"command": command, "wall_s": wall, "cpu_s": cpu, "config": config, **result}
    write_results("sudoku", markdown, data, figure, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
