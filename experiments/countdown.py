"""Countdown (Ye et al. 2025, "Beyond Autoregression", ICLR 2025): reach a target from given numbers.

Given n numbers and a target, write an equation path that combines two available numbers per equation (+, -, *, /
with integer results) until the only number left is the target; each given number is used exactly once, each result
becomes available to later equations. The format is the paper's (HKUNLP/diffusion-vs-ar, e.g. CD3):

      input  15,44,79,50          (the numbers, then the target)
      output 44-15=29,79-29=50

Planning: the first equation is only right if some later one can reach the target from its result, so a
left-to-right model must search before its first token, while a masked diffusion model (MDM) may write the last
equation (the one that contains the target) first and work backwards.

Tokens: one per integer 0..max_value (not per character as in the paper: character-level multi-digit arithmetic would
spend a CPU budget on learning to add digits), plus `+ - * / = ,`. An answer has a fixed length (5 tokens per
equation, commas, EOS), so no EOS padding.

Problems come from a local generator: draw the numbers, then a random path (random pair, random valid operation,
results in 1..max_value), whose last result is the target, so every problem has at least one solution. Exact match
means "the answer is a valid path" (`check_path`: ANY valid path counts, not only the generator's). Validation and
test problems are held out: training batches skip every problem (number multiset + target) that is in either set.

Models (same backbone, data, steps and training loop, SFT: the prompt is never a target):

* MDM, decoded easy-first (low-confidence remasking, one token per forward) and with a confidence threshold (every
  masked token with probability >= tau per forward; tokens per forward reported);
* AR twin, causal mask, greedy left to right;
* ablation: the MDM trained with token-level reweighting (gamma 2, `llada_hf.training` focal form).

Learning rate per model from a sweep on the validation set (seed 0); other seeds at the chosen rate; the reweighted
MDM uses the plain MDM's rate.

Size (defaults): CD3 with numbers in 1..10 and every value <= 100, a 64-wide 3-layer backbone, 1500 steps x batch
64. Why: 8 training runs (2-lr sweep per model, a second seed, the reweighted MDM at 2 seeds) must fit about 25 min of
one CPU thread (a step costs ~85 ms of CPU here); CD4 answers are 50 % longer (18 tokens vs 12) and their search one
level deeper, and numbers up to 20 give ~5x more distinct problems (pilot MDMs after 300 steps: loss 1.63 on 1..20,
1.21 on 1..10). 1..10 gives ~3000 distinct problems (2915 in 100k draws), so the 1000 held out (test + validation)
are a third of them: the test measures generalisation to unseen number sets, not memorisation.

    python experiments/countdown.py --seeds 2 --jobs 4    # full run: ~1200 s of CPU in all, 4 processes x 1 thread
    python experiments/countdown.py --quick               # seconds
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    BOS,
    EOS,
    FIRST_FREE_ID,
    Backbone,
    ar_decode,
    build_model,
    common_arguments,
    fmt_pct,
    markdown_table,
    mdm_decode,
    mdm_decode_order,
    mean_std,
    new_figure,
    run_parallel,
    setup,
    sft_batches,
    train,
    write_results,
)

SYMBOLS = (",", "=", "+", "-", "*", "/", "|")  # "|": end of the prompt (the paper's [SEP])
SYMBOL_ID = {s: FIRST_FREE_ID + i for i, s in enumerate(SYMBOLS)}
FIRST_VALUE = FIRST_FREE_ID + len(SYMBOLS)
OPERATIONS = ("+", "-", "*", "/")
EQUATION = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def apply(x: int, op: str, y: int) -> int | None:
    """x op y over the non-negative integers (exact division only), None where undefined."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y if x >= y else None
    if op == "*":
        return x * y
    if op == "/":
        return x // y if y != 0 and x % y == 0 else None
    raise ValueError(op)


def check_path(numbers: list[int], target: int, text: str) -> bool:
    """Is `text` ("a op b=r,c op d=s,...") a valid path: arithmetic right, each given number and each intermediate
    result used exactly once, the last number standing is the target? Any such path counts."""
    pool = Counter(numbers)
    equations = text.split(",")
    for equation in equations:
        match = EQUATION.fullmatch(equation)
        if match is None:
            return False
        x, op, y, result = int(match[1]), match[2], int(match[3]), int(match[4])
        pool[x] -= 1
        pool[y] -= 1
        if pool[x] < 0 or pool[y] < 0 or apply(x, op, y) != result:
            return False
        pool[result] += 1
    return +pool == Counter([target])


class Countdown:
    """Solvable Countdown problems with `operands` numbers in 1..max_operand, every result in 1..max_value."""

    def __init__(self, operands: int = 3, max_operand: int = 20, max_value: int = 100) -> None:
        self.operands, self.max_operand, self.max_value = operands, max_operand, max_value
        self.vocab_size = FIRST_VALUE + max_value + 1
        self.prompt_length = 1 + 2 * (operands + 1)  # BOS n1 , n2 , ... , target |
        self.equations = operands - 1
        self.answer_length = 5 * self.equations + (self.equations - 1) + 1  # equations, commas, EOS
        self.excluded: set[tuple] = set()

    @staticmethod
    def key(numbers: list[int], target: int) -> tuple:
        return (*sorted(numbers), target)

    def problem(self, rng: random.Random) -> tuple[list[int], int, str]:
        """(numbers, target, the generator's path as text): random pair, random valid op, until one number is left."""
        while True:
            numbers = [rng.randint(1, self.max_operand) for _ in range(self.operands)]
            pool, steps = list(numbers), []
            while len(pool) > 1:
                i, j = rng.sample(range(len(pool)), 2)
                x, y = max(pool[i], pool[j]), min(pool[i], pool[j])  # larger first: - and / need it
                results = [(op, r) for op in OPERATIONS if (r := apply(x, op, y)) is not None and 1 <= r]
                op, result = rng.choice(results)
                if result > self.max_value:
                    break
                pool = [v for k, v in enumerate(pool) if k not in (i, j)] + [result]
                steps.append(f"{x}{op}{y}={result}")
            if len(pool) == 1 and self.key(numbers, pool[0]) not in self.excluded:
                return numbers, pool[0], ",".join(steps)

    def problems(self, count: int, seed: int) -> list[tuple[list[int], int, str]]:
        """`count` distinct problems (distinct number multiset + target)."""
        rng, seen, out = random.Random(seed), set(), []
        while len(out) < count:
            numbers, target, path = self.problem(rng)
            if self.key(numbers, target) not in seen:
                seen.add(self.key(numbers, target))
                out.append((numbers, target, path))
        return out

    def encode_prompt(self, numbers: list[int], target: int) -> list[int]:
        values = [FIRST_VALUE + v for v in (*numbers, target)]
        body = [t for v in values for t in (v, SYMBOL_ID[","])][:-1]
        return [BOS, *body, SYMBOL_ID["|"]]

    def encode_answer(self, path: str) -> list[int]:
        tokens = [FIRST_VALUE + int(t) if t.isdigit() else SYMBOL_ID[t] for t in re.findall(r"\d+|[-+*/=,]", path)]
        return tokens + [EOS]

    def decode_answer(self, ids: list[int]) -> str:
        """Token ids -> text up to the first EOS; any other token (MASK, BOS, |) makes the text invalid ("?")."""
        names = {i: s for s, i in SYMBOL_ID.items() if s != "|"}
        text = []
        for i in ids:
            if i == EOS:
                break
            text.append(str(i - FIRST_VALUE) if i >= FIRST_VALUE else names.get(i, "?"))
        return "".join(text)

    def tensors(self, problems) -> tuple[torch.LongTensor, torch.LongTensor]:
        prompts = torch.tensor([self.encode_prompt(n, t) for n, t, _ in problems])
        answers = torch.tensor([self.encode_answer(p) for _, _, p in problems])
        return prompts, answers

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(prompts (B, prompt_length), answers (B, answer_length)) of fresh problems not held out."""
        rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
        return self.tensors([self.problem(rng) for _ in range(batch_size)])

    def batches(self, batch_size: int, seed: int):
        return sft_batches(self, batch_size, seed)


def evaluate(model, kind: str, task: Countdown, problems, batch_size: int = 250) -> dict:
    """Valid-path accuracy (exact match), agreement with the generator's path, and for the MDM (easy-first, one token
    per forward) its decoding order."""
    prompts, answers = task.tensors(problems)
    outputs, steps = [], []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        if kind == "mdm":
            output, step = mdm_decode_order(model, batch, task.answer_length)
            steps.append(step)
        else:
            output = ar_decode(model, batch, task.answer_length)
        outputs.append(output)
    outputs = torch.cat(outputs)
    texts = [task.decode_answer(row) for row in outputs.tolist()]
    valid = [check_path(n, t, text) for (n, t, _), text in zip(problems, texts)]
    record = {
        "accuracy": statistics.fmean(valid),
        "same_as_generator": float((outputs == answers).all(-1).float().mean()),
        "samples": [f"{','.join(map(str, n))},{t} -> {text}" for (n, t, _), text in zip(problems[:3], texts)],
    }
    if steps:
        step = torch.cat(steps).float()
        record["commit_step"] = [round(v, 3) for v in step.mean(0).tolist()]
        # The last equation (it holds the target) committed before the first one (mean commit step per equation).
        first, last = step[:, :5].mean(-1), step[:, -6:-1].mean(-1)
        record["last_equation_first"] = float((last < first).float().mean())
    return record


def evaluate_threshold(model, task: Countdown, problems, threshold: float) -> dict:
    """Confidence-threshold decoding, one problem at a time so that each problem's forwards are counted."""
    prompts, _ = task.tensors(problems)
    correct, forwards = [], []
    for (numbers, target, _), prompt in zip(problems, prompts):
        output, nfe = mdm_decode(model, prompt[None], task.answer_length, threshold=threshold)
        correct.append(check_path(numbers, target, task.decode_answer(output[0].tolist())))
        forwards.append(nfe)
    return {
        "threshold_accuracy": statistics.fmean(correct),
        "threshold_tokens_per_forward": task.answer_length / statistics.fmean(forwards),
    }


def run_one(kind: str, seed: int, lr: float, gamma: float, args, task: Countdown, test, validation=None) -> dict:
    """Train one model and evaluate it (test; validation if given; for the MDM also the threshold decode)."""
    setup(args.threads)
    backbone = Backbone(args.hidden, args.layers, 4, 3 * args.hidden)
    model = build_model(backbone, task.vocab_size, task.prompt_length + task.answer_length, seed)
    start = time.process_time()
    record = train(
        model, kind, task.batches(args.batch_size, seed), args.steps, lr, seed,
        warmup=min(100, args.steps // 10), log_every=max(args.steps // 20, 1), reweight_gamma=gamma,
    )  # fmt: skip
    record["train_cpu_s"] = round(time.process_time() - start, 1)
    record.update(evaluate(model, kind, task, test))
    if validation is not None:
        record["validation_accuracy"] = evaluate(model, kind, task, validation)["accuracy"]
    if kind == "mdm":
        record.update(evaluate_threshold(model, task, test, args.threshold))
    record.update(kind=kind, seed=seed, lr=lr, gamma=gamma, cpu_s=round(time.process_time() - start, 1))
    hidden = ("kind", "seed", "lr", "samples", "loss_curve", "commit_step")
    shown = ", ".join(f"{k} {v}" for k, v in record.items() if k not in hidden)
    print(f"  {kind} gamma {gamma:g} seed {seed} lr {lr:g}: {shown}", flush=True)
    return record


def run_all(jobs: list[tuple], args, task: Countdown, test, validation) -> list[dict]:
    """`run_one` for each (kind, seed, lr, gamma, use validation); in `args.jobs` processes (one thread each) when
    > 1: the runs are independent and seeded, so the results do not depend on it."""
    calls = [
        (kind, seed, lr, gamma, args, task, test, validation if use else None) for kind, seed, lr, gamma, use in jobs
    ]
    return run_parallel(run_one, calls, args.jobs, context="spawn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, seeds=2)
    parser.add_argument("--operands", type=int, default=3, help="3 (CD3) or 4 (CD4)")
    parser.add_argument("--max-operand", type=int, default=10)
    parser.add_argument("--max-value", type=int, default=100, help="largest intermediate result / target")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lrs", default="1e-3,3e-3", help="learning-rate sweep (seed 0, validation accuracy)")
    parser.add_argument("--gamma", type=float, default=2.0, help="token-level reweighting of the ablation row")
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the parallel decode")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1, help="training runs in parallel processes (one thread each)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.lrs, args.seeds, args.test_size = 12, "1e-3,3e-3", min(args.seeds, 1), 12
        args.hidden, args.layers = 32, 1
    setup(args.threads)
    start = time.time()
    command = "python experiments/countdown.py " + " ".join(argv if argv is not None else sys.argv[1:])
    task = Countdown(args.operands, args.max_operand, args.max_value)
    test = task.problems(args.test_size, seed=10_000)
    validation = [p for p in task.problems(2 * args.test_size, seed=20_000) if task.key(*p[:2]) not in
                  {task.key(*q[:2]) for q in test}][: args.test_size]  # fmt: skip
    task.excluded = {task.key(n, t) for n, t, _ in test + validation}
    print(f"countdown: {args.operands} numbers in 1..{args.max_operand}, values <= {args.max_value}, "
          f"sequence length {task.prompt_length + task.answer_length}, vocabulary {task.vocab_size}")  # fmt: skip
    lrs = [float(x) for x in args.lrs.split(",")]
    # Phase 1: the learning-rate sweep (seed 0, selection on validation); phase 2: the other seeds and the ablation.
    use_validation = len(lrs) > 1
    swept = run_all([(kind, 0, lr, 0.0, use_validation) for kind in ("mdm", "ar") for lr in lrs], args, task, test,
                    validation)  # fmt: skip
    sweep = {kind: [r for r in swept if r["kind"] == kind] for kind in ("mdm", "ar")}
    best = {
        kind: max(sweep[kind], key=lambda r: (r.get("validation_accuracy", 0.0), -r["final_loss"])) for kind in sweep
    }
    best_lr = {kind: best[kind]["lr"] for kind in sweep}
    best_lr["mdm_reweighted"] = best_lr["mdm"]
    jobs = [(kind, seed, best_lr[kind], 0.0, False) for kind in ("mdm", "ar") for seed in range(1, args.seeds)]
    jobs += [("mdm", seed, best_lr["mdm"], args.gamma, False) for seed in range(args.seeds)]
    rest = run_all(jobs, args, task, test, validation)
    runs = {
        kind: [best[kind]] + [r for r in rest if r["kind"] == kind and r["gamma"] == 0.0] for kind in ("mdm", "ar")
    }
    runs["mdm_reweighted"] = [r for r in rest if r["gamma"] != 0.0]
    wall = round(time.time() - start, 1)

    summary = {name: {"accuracy": mean_std([r["accuracy"] for r in runs[name]])} for name in runs}
    for name in ("mdm", "mdm_reweighted"):
        for metric in ("threshold_accuracy", "threshold_tokens_per_forward", "last_equation_first"):
            summary[name][metric] = mean_std([r[metric] for r in runs[name]])
    markdown = report(command, wall, args, task, runs, sweep, best_lr, summary)
    fig, axes = new_figure(ncols=2, width=5.5)
    plot(axes[0][0], summary, args)
    plot_losses(axes[0][1], runs)
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    data = {"command": command, "wall_s": wall, "config": config, "best_lr": best_lr, "summary": summary,
            "runs": runs, "sweep": sweep}  # fmt: skip
    write_results("countdown", markdown, data, fig, Path(args.out_dir))
    return 0


LABELS = {
    "mdm": "MDM, easy-first (1 token / forward)",
    "mdm_threshold": "MDM, confidence threshold",
    "ar": "AR twin, greedy left to right",
    "mdm_reweighted": "MDM + token reweighting, easy-first",
    "mdm_reweighted_threshold": "MDM + token reweighting, confidence threshold",
}


def report(command, wall, args, task, runs, sweep, best_lr, summary) -> str:
    s = summary
    cpu = sum(r["cpu_s"] for name in sweep for r in sweep[name]) + sum(r["cpu_s"] for r in runs["mdm_reweighted"])
    cpu += sum(r["cpu_s"] for name in ("mdm", "ar") for r in runs[name][1:])
    tpf = {name: f"{s[name]['threshold_tokens_per_forward']['mean']:.2f}" for name in ("mdm", "mdm_reweighted")}
    rows = [
        [LABELS["mdm"], fmt_pct(s["mdm"]["accuracy"]), "1.00", f"{best_lr['mdm']:g}"],
        [LABELS["mdm_threshold"] + f" {args.threshold:g}", fmt_pct(s["mdm"]["threshold_accuracy"]), tpf["mdm"],
         f"{best_lr['mdm']:g}"],
        [LABELS["ar"], fmt_pct(s["ar"]["accuracy"]), "1.00", f"{best_lr['ar']:g}"],
        [LABELS["mdm_reweighted"] + f" (gamma {args.gamma:g})", fmt_pct(s["mdm_reweighted"]["accuracy"]), "1.00",
         f"{best_lr['mdm']:g}"],
        [LABELS["mdm_reweighted_threshold"] + f" {args.threshold:g}",
         fmt_pct(s["mdm_reweighted"]["threshold_accuracy"]), tpf["mdm_reweighted"], f"{best_lr['mdm']:g}"],
    ]  # fmt: skip
    seed_rows = [
        [name, r["seed"], f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['accuracy']:.1f}",
         f"{100 * r['same_as_generator']:.1f}",
         f"{100 * r['threshold_accuracy']:.1f}" if "threshold_accuracy" in r else "",
         r["train_s"], r["samples"][0]]
        for name in runs for r in runs[name]
    ]  # fmt: skip
    sweep_rows = [
        [name, f"{r['lr']:g}", f"{r['final_loss']:.3f}",
         f"{100 * r['validation_accuracy']:.1f}" if "validation_accuracy" in r else "-",
         "**selected**" if r["lr"] == best_lr[name] else ""]
        for name in sweep for r in sweep[name]
    ]  # fmt: skip
    order = fmt_pct(s["mdm"]["last_equation_first"])
    return (
        f"# Countdown (CD{args.operands})\n\n`{command}` ({wall:.0f} s wall, {args.jobs} process(es) x {args.threads} "
        f"thread(s); the runs' CPU time adds up to {cpu:.0f} s)\n\n"
        f"{args.operands} numbers in 1..{args.max_operand} and a target; every result (and the target) in "
        f"1..{args.max_value}; +, -, *, / with integer results. {args.test_size} held-out test problems (never in "
        f"training, nor the {args.test_size} validation problems). Backbone {args.hidden} wide, {args.layers} layers, "
        f"4 heads; {args.steps} steps x batch {args.batch_size} fresh problems for every model. Exact match = the "
        f"answer is a valid path to the target (any path, each number used once), mean ± sample std over "
        f"{args.seeds} seed(s).\n\n"
        + markdown_table(["model / decoding", "exact match (%)", "tokens / forward", "lr"], rows)
        + f"\nMDM decoding order (easy-first): the last equation (it contains the target) is committed before the "
        f"first one (mean commit step) in {order} % of test problems.\n\nPer seed:\n\n"
        + markdown_table(
            [
                "model",
                "seed",
                "lr",
                "final loss",
                "valid path",
                "same as generator",
                "threshold valid",
                "train s",
                "sample (test)",
            ],
            seed_rows,
        )  # fmt: skip
        + "\nLearning-rate sweep (seed 0; selected by validation valid-path accuracy, then training loss):\n\n"
        + markdown_table(["model", "lr", "final loss", "validation valid path", ""], sweep_rows)
    )


def plot(ax, summary: dict, args) -> None:
    bars = [
        ("MDM\neasy-first", summary["mdm"]["accuracy"], "tab:blue"),
        (f"MDM\nthreshold {args.threshold:g}", summary["mdm"]["threshold_accuracy"], "tab:cyan"),
        ("AR\ngreedy", summary["ar"]["accuracy"], "tab:orange"),
        (f"MDM+rw\n(gamma {args.gamma:g})", summary["mdm_reweighted"]["accuracy"], "tab:green"),
    ]
    for i, (_, stats, color) in enumerate(bars):
        ax.bar(i, 100 * stats["mean"], 0.6, yerr=100 * stats["std"], color=color)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("held-out exact match: valid path (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Countdown CD{args.operands} ({args.seeds} seeds)", fontsize=10)


def plot_losses(ax, runs: dict) -> None:
    colors = {"mdm": "tab:blue", "ar": "tab:orange", "mdm_reweighted": "tab:green"}
    for name, name_runs in runs.items():
        for i, r in enumerate(name_runs):
            steps, losses = zip(*r["loss_curve"]) if r["loss_curve"] else ((), ())
            ax.plot(steps, losses, color=colors[name], alpha=0.8, label=name if i == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("loss curves (every seed at the selected lr)", fontsize=10)


if __name__ == "__main__":
    raise SystemExit(main())
