"""Decoding trade-off of the masked model: accuracy vs tokens committed per forward.

Two ways to commit more than one token per denoising step (`generate()` options):

* a fixed k tokens per step: `steps = canvas / k` (the official schedule);
* a confidence threshold (Fast-dLLM parallel decoding): commit every masked token whose probability is >= tau, at
  least one per step; easy tokens go together, hard ones wait.

Measured on two masked models:

1. the embedded demo model (chat-formatted addition, 16-token canvas), on its 300 held-out operand pairs (no training;
   one model, so no seed spread; greedy decoding is deterministic);
2. clock-walk models trained from scratch (the planning task of `experiments/planning.py`), one per seed: each
   position is one subtraction away from the next one, so the answer can only be computed as a chain from the goal
   backwards, and committing many tokens in one step forces guesses.

Tokens per forward = canvas tokens / forwards (EOS padding included, as the sampler fills it). Threshold decoding runs
one sequence at a time so each question's own number of forwards is counted.

    python experiments/decoding.py --seeds 3          # ~4 min on one CPU core
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Backbone,
    build_model,
    common_arguments,
    markdown_table,
    mdm_decode,
    mean_std,
    new_figure,
    setup,
    train,
    write_results,
)
from planning import ClockWalk  # noqa: E402

THRESHOLDS = (0.99, 0.9, 0.7, 0.5, 0.3, 0.1)


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def sweep(run_setting, canvas: int, thresholds=THRESHOLDS) -> list[dict]:
    """`run_setting(steps=..., threshold=...) -> (accuracy, mean forwards)` for each k and each threshold."""
    results = []
    for k in divisors(canvas):
        accuracy, forwards = run_setting(steps=canvas // k, threshold=None)
        results.append({"rule": "fixed k", "setting": k, "accuracy": accuracy, "forwards": forwards})
    for tau in thresholds:
        accuracy, forwards = run_setting(steps=None, threshold=tau)
        results.append({"rule": "threshold", "setting": tau, "accuracy": accuracy, "forwards": forwards})
    for row in results:
        row["tokens_per_forward"] = canvas / row["forwards"]
    return results


# ---------------------------------------------------------------------------------------------------------------------
# 1. the embedded demo model


def demo_sweep(n_questions: int) -> tuple[list[dict], int]:
    from llada_hf.demo import DEMO_GENERATION, PHRASINGS, arithmetic_answer, load_demo_model, split_pairs

    model, tokenizer = load_demo_model()
    _, held_out = split_pairs()
    rng = random.Random(0)
    questions = [(rng.choice(PHRASINGS).format(a=a, b=b), arithmetic_answer(a, b)) for a, b in held_out[:n_questions]]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        for q, _ in questions
    ]  # fmt: skip
    canvas = DEMO_GENERATION["max_new_tokens"]

    def run_setting(steps, threshold):
        correct, forwards = 0, []
        # Group equal-length prompts (no padding needed); thresholds one at a time (per-question forwards).
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(i)
        for indices in by_length.values():
            chunks = [[i] for i in indices] if threshold is not None else [indices]
            for chunk in chunks:
                batch = torch.tensor([prompts[i] for i in chunk])
                answers, nfe = mdm_decode(model, batch, canvas, steps=steps, threshold=threshold)
                for i, answer in zip(chunk, answers):
                    correct += tokenizer.decode(answer, skip_special_tokens=True).strip() == questions[i][1]
                forwards += [nfe] * len(chunk)
        return correct / len(prompts), statistics.fmean(forwards)

    return sweep(run_setting, canvas), canvas


# ---------------------------------------------------------------------------------------------------------------------
# 2. clock-walk models trained from scratch


def clock_sweep(seed: int, args) -> tuple[list[dict], int, dict]:
    task = ClockWalk(args.positions)
    model = build_model(Backbone(**args.backbone), task.vocab_size, task.prompt_length + task.answer_length, seed)
    record = train(model, "mdm", task.batches(args.batch_size, seed), args.steps, args.lr, seed,
                   warmup=min(100, args.steps // 10))  # fmt: skip
    prompts, answers = task.sample(args.test_size, torch.Generator().manual_seed(10_000))
    canvas = task.answer_length
    path = slice(0, task.path_length)

    def run_setting(steps, threshold):
        if threshold is None:
            outputs, nfe = mdm_decode(model, prompts, canvas, steps=steps)
            return float((outputs[:, path] == answers[:, path]).all(-1).float().mean()), float(nfe)
        correct, forwards = 0, []
        for i in range(len(prompts)):
            output, nfe = mdm_decode(model, prompts[i : i + 1], canvas, threshold=threshold)
            correct += bool((output[0, path] == answers[i, path]).all())
            forwards.append(nfe)
        return correct / len(prompts), statistics.fmean(forwards)

    results = sweep(run_setting, canvas)
    print(f"  clock seed {seed}: trained in {record['train_s']} s, loss {record['final_loss']:.3f}; "
          + ", ".join(f"{r['rule']} {r['setting']}: {100 * r['accuracy']:.0f}%" for r in results))  # fmt: skip
    return results, canvas, record


def aggregate(per_seed: list[list[dict]]) -> list[dict]:
    rows = []
    for settings in zip(*per_seed):
        rows.append({
            "rule": settings[0]["rule"], "setting": settings[0]["setting"],
            "accuracy": mean_std([s["accuracy"] for s in settings]),
            "tokens_per_forward": mean_std([s["tokens_per_forward"] for s in settings]),
            "forwards": mean_std([s["forwards"] for s in settings]),
        })  # fmt: skip
    return rows


def table(rows: list[dict], spread: bool) -> str:
    def cell(value, scale=1.0, digits=1):
        if isinstance(value, dict):
            text = f"{scale * value['mean']:.{digits}f}"
            return text + (f" ± {scale * value['std']:.{digits}f}" if spread else "")
        return f"{scale * value:.{digits}f}"

    body = [
        [r["rule"], f"k = {r['setting']}" if r["rule"] == "fixed k" else f"tau = {r['setting']}",
         cell(r["forwards"], digits=2), cell(r["tokens_per_forward"], digits=2), cell(r["accuracy"], 100)]
        for r in rows
    ]  # fmt: skip
    return markdown_table(["rule", "setting", "forwards", "tokens / forward", "accuracy (%)"], body)


def plot(ax, rows: list[dict], title: str) -> None:
    def value(v):
        return (v["mean"], v["std"]) if isinstance(v, dict) else (v, 0.0)

    for rule, style, offset in (("fixed k", "o-", (4, 4)), ("threshold", "s--", (-4, -12))):
        selected = [r for r in rows if r["rule"] == rule]
        xs = [value(r["tokens_per_forward"])[0] for r in selected]
        ys = [100 * value(r["accuracy"])[0] for r in selected]
        errors = [100 * value(r["accuracy"])[1] for r in selected]
        ax.errorbar(xs, ys, yerr=errors, fmt=style, capsize=3, label=rule)
        labels: dict[tuple[float, float], list[str]] = {}  # settings that land on the same point share one label
        for r, x, y in zip(selected, xs, ys):
            labels.setdefault((round(x, 3), round(y, 3)), []).append(str(r["setting"]))
        for (x, y), names in labels.items():
            ax.annotate(",".join(names), (x, y), textcoords="offset points", xytext=offset, fontsize=7,
                        ha="left" if offset[0] > 0 else "right")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens per forward (log scale)")
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-2, 105)
    ax.margins(x=0.1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--demo-questions", type=int, default=300)
    parser.add_argument("--positions", type=int, default=5, help="clock-walk positions (canvas = positions + 1)")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-size", type=int, default=200)
    args = parser.parse_args(argv)
    args.backbone = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=192)
    if args.quick:
        args.demo_questions, args.steps, args.seeds, args.test_size = 20, 30, min(args.seeds, 1), 20
    setup(args.threads)
    start = time.time()
    command = "python experiments/decoding.py " + " ".join(argv if argv is not None else sys.argv[1:])

    demo_rows, demo_canvas = demo_sweep(args.demo_questions)
    per_seed, records = [], []
    for seed in range(args.seeds):
        rows, clock_canvas, record = clock_sweep(seed, args)
        per_seed.append(rows)
        records.append(record)
    clock_rows = aggregate(per_seed) if per_seed else []
    wall = round(time.time() - start, 1)

    markdown = (
        f"# Decoding trade-off: accuracy vs tokens per forward\n\n`{command}` ({wall:.0f} s, {args.threads} "
        f"thread(s))\n\n## Embedded demo model (addition), {args.demo_questions} held-out questions\n\n"
        f"Canvas {demo_canvas} tokens, one block, greedy. One model: no seed spread.\n\n"
        + table(demo_rows, spread=False)
    )
    if clock_rows:
        markdown += (
            f"\n## Clock-walk model ({args.positions} positions), trained from scratch\n\n"
            f"Canvas {clock_canvas} tokens (positions + EOS), {args.test_size} held-out walks, backbone "
            f"{args.backbone}, {args.steps} steps x batch {args.batch_size}, lr {args.lr:g}; whole-answer exact "
            f"match, mean ± sample std over {args.seeds} seed(s).\n\n" + table(clock_rows, spread=True)
        )
        per_seed_rows = [
            [r["rule"], r["setting"], *(f"{100 * seed_rows[i]['accuracy']:.0f}" for seed_rows in per_seed)]
            for i, r in enumerate(per_seed[0])
        ]
        final_losses = ", ".join(f"{record['final_loss']:.3f}" for record in records)
        markdown += f"\nPer seed (accuracy %; final training losses {final_losses}):\n\n" + markdown_table(
            ["rule", "setting", *(f"seed {s}" for s in range(args.seeds))], per_seed_rows
        )
    data = {
        "command": command, "wall_s": wall, "config": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "demo": demo_rows, "clock": clock_rows, "clock_per_seed": per_seed, "clock_training": records,
    }  # fmt: skip
    fig, axes = new_figure(ncols=2 if clock_rows else 1, width=5.0)
    plot(axes[0][0], demo_rows, f"Demo model: addition (canvas {demo_canvas})")
    if clock_rows:
        plot(axes[0][1], clock_rows, f"Clock walk (canvas {clock_canvas}, {args.seeds} seeds)")
    write_results("decoding", markdown, data, fig, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
