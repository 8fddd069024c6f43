"""Diffusion of thought (Ye et al., NeurIPS 2024): multi-digit multiplication with and without a written trace.

Task: an n-digit by m-digit product (no leading zeros), answered in one of two formats that share everything but the
trace:

* direct: the product digits only;
* trace (chain of thought): the partial products a * b_j * 10^j, their running sums, then the product. This is the
  format of the implicit-CoT multiplication data that Diffusion of Thought trains on (Deng et al. 2023).

Every number is written least-significant digit first (LSD-first) and zero-padded to a fixed width, in the prompt,
the trace and the answer, for both models: then each digit is a local function of digits already written on its
left (the carry of a partial product is recoverable from the previous digit), so the left-to-right AR twin can
compute the trace digit by digit, and the MDM loses nothing (its sampler may commit positions in any order). Fixed
widths also give every answer the same length, so the canvas needs no EOS padding. Example (4 x 2: 7162 * 73):

    <bos> 2 6 1 7 * 3 7 ?      trace:  6 8 4 1 2 + 0 4 3 1 0 5 # 6 2 8 2 2 5 <eos>      direct:  # 6 2 8 2 2 5 <eos>
          a LSD-first b        a*b_0 = 21486   a*b_1*10 = 501340   product 522826

For m > 2 each later partial product is followed by `=` and the running sum (the running sum after the last one is
the product, written after `#`). The final answer is the digits after the last `#` up to EOS; exact match of that
number on held-out problems (never drawn in training) is the metric; the whole answer's exact match (trace included)
is reported too.

Size: 2 x 2 digits by default (8100 problems, 1000 of them held out), the size this CPU budget can train twelve
models on. A first try at 4 x 2 digits (1500 steps x batch 64, 64 wide, 3 layers, lr 3e-3, one seed: about as much
per model as the whole 25-minute budget allows) learnt neither format: MDM with the trace 0.0 % (loss 1.12), MDM
direct 0.0 % (loss 1.19), AR direct 0.2 % (loss 1.01), on 500 held-out problems.

Both models share the backbone, the training batches, steps and loop (SFT: the prompt is never a target). The MDM is
decoded by `generate()` (low-confidence order) with answer_length / 1, / 2, / 4, ... steps and with confidence
thresholds (each problem's own number of forwards is counted), the AR twin greedily left to right (one forward per
token). Learning rate per model and format from a sweep at seed 0 on a validation set; the other seeds at that rate.

    python experiments/diffusion_of_thought.py --seeds 2             # ~16 CPU minutes (one thread)
    python experiments/diffusion_of_thought.py --seeds 2 --jobs 4    # the same, four processes in parallel
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    BOS,
    EOS,
    FIRST_FREE_ID,
    MASK,
    Backbone,
    ar_decode,
    build_model,
    common_arguments,
    fmt_pct,
    markdown_table,
    mean_std,
    new_figure,
    run_parallel,
    setup,
    sft_batches,
    train,
    write_results,
)

DIGIT0 = FIRST_FREE_ID  # digits 0..9 are ids DIGIT0..DIGIT0 + 9
TIMES, ASK, PLUS, EQ, ANS = range(DIGIT0 + 10, DIGIT0 + 15)
VOCAB_SIZE = ANS + 1
SYMBOLS = {BOS: "<bos>", EOS: "<eos>", MASK: "<mask>", TIMES: "*", ASK: "?", PLUS: "+", EQ: "=", ANS: "#"}
FORMATS = ("direct", "trace")
THRESHOLDS = (0.99, 0.9, 0.7, 0.5)


def digits_lsd(value: int, width: int) -> list[int]:
    """Token ids of `value`'s digits, least significant first, zero-padded to `width` (value must fit)."""
    if not 0 <= value < 10**width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return [DIGIT0 + (value // 10**k) % 10 for k in range(width)]


def detokenize(tokens: list[int]) -> str:
    return " ".join(str(t - DIGIT0) if DIGIT0 <= t < DIGIT0 + 10 else SYMBOLS.get(t, f"<{t}>") for t in tokens)


class Multiplication:
    """n-digit x m-digit products as (prompt, answer) token tensors, in the `trace` or `direct` format.

    Problems whose key a * 10^m + b is in `excluded` (the held-out sets) are redrawn, so training never sees them."""

    def __init__(self, n_digits: int, m_digits: int, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(fmt)
        if n_digits < 1 or m_digits < 1:
            raise ValueError("need at least one digit per operand")
        self.n, self.m, self.fmt = n_digits, m_digits, fmt
        self.vocab_size = VOCAB_SIZE
        self.prompt_length = n_digits + m_digits + 3
        self.answer_length = len(self.answer_tokens(10 ** (n_digits - 1), 10 ** (m_digits - 1)))
        self.excluded = torch.empty(0, dtype=torch.long)

    def key(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * 10**self.m + b

    def prompt_tokens(self, a: int, b: int) -> list[int]:
        return [BOS, *digits_lsd(a, self.n), TIMES, *digits_lsd(b, self.m), ASK]

    def answer_tokens(self, a: int, b: int) -> list[int]:
        """The answer in this task's format (the trace is built digit by digit, the way it is written)."""
        n, m = self.n, self.m
        product = [ANS, *digits_lsd(a * b, n + m), EOS]
        if self.fmt == "direct":
            return product
        b_digits = [(b // 10**j) % 10 for j in range(m)]
        tokens = digits_lsd(a * b_digits[0], n + 1)
        running = a * b_digits[0]
        for j in range(1, m):
            partial = a * b_digits[j] * 10**j
            running += partial
            tokens += [PLUS, *digits_lsd(partial, n + 1 + j)]
            if j < m - 1:
                tokens += [EQ, *digits_lsd(running, n + 1 + j)]
        return tokens + product

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Operands (a, b), uniform over n-digit x m-digit numbers, none of them in `excluded`."""
        low_a, low_b = 10 ** (self.n - 1), 10 ** (self.m - 1)
        a = torch.randint(low_a, 10 * low_a, (batch_size,), generator=generator)
        b = torch.randint(low_b, 10 * low_b, (batch_size,), generator=generator)
        redraw = torch.isin(self.key(a, b), self.excluded)
        while bool(redraw.any()):
            k = int(redraw.sum())
            a[redraw] = torch.randint(low_a, 10 * low_a, (k,), generator=generator)
            b[redraw] = torch.randint(low_b, 10 * low_b, (k,), generator=generator)
            redraw = torch.isin(self.key(a, b), self.excluded)
        return a, b

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
        prompts = [self.prompt_tokens(x, y) for x, y in zip(a.tolist(), b.tolist())]
        answers = [self.answer_tokens(x, y) for x, y in zip(a.tolist(), b.tolist())]
        return torch.tensor(prompts), torch.tensor(answers)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(prompts (B, prompt_length), answers (B, answer_length)); answers end with EOS."""
        return self.encode(*self.draw(batch_size, generator))

    def held_out(self, size: int, seed: int) -> tuple[torch.LongTensor, torch.LongTensor, torch.Tensor]:
        """`size` distinct problems, excluded from later draws: (prompts, answers, true products)."""
        generator, keys = torch.Generator().manual_seed(seed), []
        while len(keys) < size:
            a, b = self.draw(size, generator)
            for k in self.key(a, b).tolist():
                if k not in keys and len(keys) < size:
                    keys.append(k)
        keys = torch.tensor(keys)
        self.excluded = torch.cat([self.excluded, keys])
        a, b = keys // 10**self.m, keys % 10**self.m
        return (*self.encode(a, b), a * b)

    def batches(self, batch_size: int, seed: int):
        return sft_batches(self, batch_size, seed)


def final_answer(tokens: list[int]) -> int | None:
    """The number after the last `#` up to the first EOS (digits LSD-first); None if there is none or it is not
    all digits (a malformed answer never matches)."""
    tokens = list(tokens)
    end = tokens.index(EOS) if EOS in tokens else len(tokens)
    tokens = tokens[:end]
    if ANS not in tokens:
        return None
    number = tokens[len(tokens) - tokens[::-1].index(ANS) :]
    if not number or not all(DIGIT0 <= t < DIGIT0 + 10 for t in number):
        return None
    return sum((t - DIGIT0) * 10**k for k, t in enumerate(number))


def answers_correct(outputs: torch.LongTensor, products: torch.Tensor) -> torch.Tensor:
    """(B,) bool: exact match of the extracted final answer with the true product."""
    return torch.tensor([final_answer(row) == p for row, p in zip(outputs.tolist(), products.tolist())])


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and evaluation


@torch.no_grad()
def mdm_generate(model, prompts: torch.LongTensor, length: int, steps: int | None, threshold: float | None):
    """Answers (B, length) and each row's own number of forwards (B,): with a threshold a batch runs until its last
    row is done, so a row's forwards are the steps before which it still had a mask (from the step history)."""
    kwargs = dict(max_new_tokens=length, block_length=length, return_dict_in_generate=True, output_history=True)
    if threshold is None:
        kwargs["steps"] = steps
    out = model.generate(prompts, threshold=threshold, **kwargs)
    history = torch.stack(out.history)[:, :, prompts.shape[1] :]  # (S, B, L): canvas after each step
    had_mask = (history[:-1] == MASK).any(-1)  # before steps 1..S-1
    forwards = 1 + had_mask.sum(0)
    if int(forwards.max()) != out.nfe:
        raise RuntimeError(f"per-row forwards {int(forwards.max())} != generate's nfe {out.nfe}")
    return out.sequences[:, prompts.shape[1] :], forwards


def step_counts(length: int) -> list[int]:
    """length / 1, / 2, / 4, ... (rounded up) down to one step."""
    counts, divisor = [], 1
    while True:
        steps = -(-length // divisor)
        if steps not in counts:
            counts.append(steps)
        if steps == 1:
            return counts
        divisor *= 2


def trace_correct(task: Multiplication, prompts: torch.LongTensor, outputs: torch.LongTensor) -> torch.Tensor:
    """(B,) bool: the whole answer (trace included) equals the reference one."""
    return (outputs == torch.stack([torch.tensor(task.answer_tokens(*operands(task, p))) for p in prompts])).all(-1)


def operands(task: Multiplication, prompt: torch.LongTensor) -> tuple[int, int]:
    digits = [int(t) - DIGIT0 for t in prompt.tolist()]
    a = sum(d * 10**k for k, d in enumerate(digits[1 : 1 + task.n]))
    b = sum(d * 10**k for k, d in enumerate(digits[2 + task.n : 2 + task.n + task.m]))
    return a, b


def evaluate(model, kind: str, task: Multiplication, held_out, full: bool, batch_size: int = 250) -> dict:
    """Exact match of the final product; for the MDM at one token per step (the headline) and, if `full`, at every
    step count of `step_counts` and every threshold (accuracy vs mean forwards per problem)."""
    prompts, _, products = held_out
    length = task.answer_length

    def run(decoder) -> tuple[float, float, float]:
        correct, whole, forwards = [], [], []
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i : i + batch_size]
            outputs, nfe = decoder(batch)
            correct.append(answers_correct(outputs, products[i : i + batch_size]))
            whole.append(trace_correct(task, batch, outputs))
            forwards.append(nfe.float())
        mean = lambda parts: float(torch.cat(parts).float().mean())  # noqa: E731
        return mean(correct), mean(whole), mean(forwards)

    if kind == "ar":
        accuracy, whole, forwards = run(lambda p: (ar_decode(model, p, length), torch.full((len(p),), length)))
        return {"accuracy": accuracy, "answer_exact": whole, "forwards": forwards}
    accuracy, whole, forwards = run(lambda p: mdm_generate(model, p, length, length, None))
    record = {"accuracy": accuracy, "answer_exact": whole, "forwards": forwards}
    if full:
        curve = []
        for steps in step_counts(length):
            acc, _, fwd = run(lambda p, s=steps: mdm_generate(model, p, length, s, None))
            curve.append({"rule": "steps", "setting": steps, "accuracy": acc, "forwards": fwd})
        for tau in THRESHOLDS:
            acc, _, fwd = run(lambda p, t=tau: mdm_generate(model, p, length, None, t))
            curve.append({"rule": "threshold", "setting": tau, "accuracy": acc, "forwards": fwd})
        record["curve"] = curve
    return record


# ---------------------------------------------------------------------------------------------------------------------
# Runs


def train_logged(model, kind: str, task: Multiplication, steps: int, lr: float, seed: int, batch_size: int) -> dict:
    """`common.train`, with its loss curve (20 points) as {"every": steps between points, "loss": [...]}."""
    log_every = max(steps // 20, 1)
    record = train(model, kind, task.batches(batch_size, seed), steps, lr, seed, warmup=min(100, steps // 10),
                   log_every=log_every)  # fmt: skip
    record["loss_curve"] = {"every": log_every, "loss": [loss for _, loss in record["loss_curve"]]}
    return record


def run_one(kind: str, seed: int, lr: float, args, task, test, validation=None) -> dict:
    start, cpu_start = time.time(), time.process_time()
    model = build_model(Backbone(**args.backbone), task.vocab_size, task.prompt_length + task.answer_length, seed)
    record = train_logged(model, kind, task, args.train_steps, lr, seed, args.batch_size)
    if validation is not None:
        record["validation_accuracy"] = evaluate(model, kind, task, validation, full=False)["accuracy"]
    record.update(evaluate(model, kind, task, test, full=True))
    if kind == "mdm":  # one sample answer at one token per step (seed rows show what the model writes)
        sample, _ = mdm_generate(model, test[0][:1], task.answer_length, task.answer_length, None)
    else:
        sample = ar_decode(model, test[0][:1], task.answer_length)
    record["sample"] = f"{detokenize(test[0][0].tolist())} {detokenize(sample[0].tolist())}"
    record.update(kind=kind, seed=seed, lr=lr, wall_s=round(time.time() - start, 1),
                  cpu_s=round(time.process_time() - cpu_start, 1))  # fmt: skip
    shown = {k: v for k, v in record.items() if k not in ("curve", "loss_curve", "kind", "seed", "lr")}
    print(f"  [{task.fmt}] {kind} seed {seed} lr {lr:g}: {shown}", flush=True)
    return record


def held_out_sets(task: Multiplication, args):
    """Test set, and a validation set when there is a sweep; the same problems for both formats (same draws)."""
    test = task.held_out(args.test_size, seed=10_000)
    validation = task.held_out(args.test_size, seed=20_000) if len(args.lr_list) > 1 else None
    return test, validation


def run_kind(fmt: str, kind: str, args) -> dict:
    """One model kind on one format: seed 0 at every lr (selection: validation accuracy, then training loss), the
    other seeds at the chosen lr. Self-contained, so the four (format, kind) jobs can run in parallel processes."""
    setup(args.threads)
    task = Multiplication(args.n_digits, args.m_digits, fmt)
    test, validation = held_out_sets(task, args)
    sweep = [run_one(kind, 0, lr, args, task, test, validation) for lr in args.lr_list]
    best = max(sweep, key=lambda r: (r.get("validation_accuracy", 0.0), -r["final_loss"]))
    runs = [best] + [run_one(kind, s, best["lr"], args, task, test) for s in range(1, args.seeds)]
    return {"sweep": sweep, "runs": runs, "best_lr": best["lr"]}


def collect_format(fmt: str, parts: dict, args) -> dict:
    """The two kinds' results of one format, summarised over seeds (and the MDM's accuracy-vs-forwards curve)."""
    task = Multiplication(args.n_digits, args.m_digits, fmt)
    test, _ = held_out_sets(task, args)
    runs = {kind: parts[kind]["runs"] for kind in ("mdm", "ar")}
    summary = {kind: {m: mean_std([r[m] for r in runs[kind]]) for m in ("accuracy", "answer_exact")} for kind in runs}
    curve = []
    for i, point in enumerate(runs["mdm"][0]["curve"]):
        points = [r["curve"][i] for r in runs["mdm"]]
        curve.append({"rule": point["rule"], "setting": point["setting"],
                      "accuracy": mean_std([p["accuracy"] for p in points]),
                      "forwards": mean_std([p["forwards"] for p in points])})  # fmt: skip
    return {
        "answer_length": task.answer_length, "prompt_length": task.prompt_length,
        "example": f"{detokenize(test[0][0].tolist())} {detokenize(test[1][0].tolist())}",
        "sweep": {kind: parts[kind]["sweep"] for kind in runs} if len(args.lr_list) > 1 else None,
        "runs": runs, "best_lr": {kind: parts[kind]["best_lr"] for kind in runs}, "summary": summary,
        "mdm_curve": curve,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Report


def report(results: dict, args, command: str, wall: float, cpu_s: float) -> str:
    n, m = args.n_digits, args.m_digits
    head_rows = []
    for fmt in FORMATS:
        r = results[fmt]
        lrs = f"{r['best_lr']['mdm']:g} / {r['best_lr']['ar']:g}"
        accuracy = [fmt_pct(r["summary"][kind]["accuracy"]) for kind in ("mdm", "ar")]
        head_rows.append([f"{fmt} ({r['answer_length']} answer tokens)", *accuracy, lrs])
    text = (
        f"# Diffusion of thought: {n}-digit x {m}-digit multiplication\n\n`{command}` ({wall:.0f} s wall, "
        f"{args.jobs} process(es) of {args.threads} thread(s); {cpu_s:.0f} CPU s in training and evaluation)\n\n"
        f"Held-out exact match of the final product ({args.test_size} test problems never drawn in training), mean ± "
        f"sample std over {args.seeds} seed(s); backbone {args.backbone}, {args.train_steps} steps x batch "
        f"{args.batch_size} fresh problems per model and format; MDM decoded one token per step (low confidence), AR "
        "greedily left to right (both: one forward per answer token). Learning rate per model and format from "
        f"{args.lr_list} on a validation set (seed 0).\n\n"
        + markdown_table(["answer format", "masked diffusion", "autoregressive", "lr MDM / AR"], head_rows)
    )
    for fmt in FORMATS:
        r = results[fmt]
        text += f"\n## {fmt} format\n\nExample: `{r['example']}`\n\nPer seed:\n\n"
        rows = [
            [kind.upper(), x["seed"], f"{x['lr']:g}", f"{x['final_loss']:.3f}", f"{100 * x['accuracy']:.1f}",
             f"{100 * x['answer_exact']:.1f}", x["train_s"], f"`{x['sample']}`"]
            for kind in ("mdm", "ar") for x in r["runs"][kind]
        ]  # fmt: skip
        text += markdown_table(
            ["model", "seed", "lr", "final loss", "product exact (%)", "whole answer exact (%)", "train s", "sample"],
            rows,
        )
        text += "\nMDM accuracy vs forwards (mean ± std over seeds; forwards = mean per problem):\n\n"
        rows = [
            [p["rule"], p["setting"], f"{p['forwards']['mean']:.2f}",
             f"{r['answer_length'] / p['forwards']['mean']:.2f}", fmt_pct(p["accuracy"])]
            for p in r["mdm_curve"]
        ]  # fmt: skip
        text += markdown_table(["rule", "steps / threshold", "forwards", "tokens / forward", "accuracy (%)"], rows)
        if r["sweep"]:
            rows = [
                [kind.upper(), f"{x['lr']:g}", f"{x['final_loss']:.3f}", f"{100 * x['validation_accuracy']:.1f}",
                 "**selected**" if x["lr"] == r["best_lr"][kind] else ""]
                for kind in ("mdm", "ar") for x in r["sweep"][kind]
            ]  # fmt: skip
            text += "\nLearning-rate sweep (seed 0; selected by validation accuracy, then training loss):\n\n"
            text += markdown_table(["model", "lr", "final loss", "validation accuracy (%)", ""], rows)
        text += "\nTraining loss (mean of each 1/20 of training, seed 0 at the selected lr): "
        for kind in ("mdm", "ar"):
            curve = r["runs"][kind][0]["loss_curve"]["loss"]
            text += f"{kind.upper()} " + " ".join(f"{v:.3f}" for v in curve[:: max(len(curve) // 10, 1)]) + "; "
        text = text.rstrip("; ") + ".\n"
    return text


def plot(results: dict, args):
    fig, axes = new_figure(ncols=2, width=5.0)
    ax = axes[0][0]
    for offset, kind, color in ((-0.2, "mdm", "tab:blue"), (0.2, "ar", "tab:orange")):
        means = [100 * results[f]["summary"][kind]["accuracy"]["mean"] for f in FORMATS]
        errors = [100 * results[f]["summary"][kind]["accuracy"]["std"] for f in FORMATS]
        ax.bar([i + offset for i in range(len(FORMATS))], means, 0.4, yerr=errors, color=color, label=kind.upper())
    ax.set_xticks(range(len(FORMATS)), ["direct answer", "with trace"])
    ax.set_ylabel("held-out exact match (%)")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=8)
    ax.set_title(f"{args.n_digits}x{args.m_digits}-digit products ({args.seeds} seeds)", fontsize=10)
    ax = axes[0][1]
    for fmt, color in (("direct", "tab:green"), ("trace", "tab:blue")):
        r = results[fmt]
        for rule, style in (("steps", "o-"), ("threshold", "s--")):
            points = [p for p in r["mdm_curve"] if p["rule"] == rule]
            ax.errorbar([p["forwards"]["mean"] for p in points], [100 * p["accuracy"]["mean"] for p in points],
                        yerr=[100 * p["accuracy"]["std"] for p in points], fmt=style, color=color, ms=4,
                        label=f"MDM {fmt}, {'fixed steps' if rule == 'steps' else 'threshold'}")  # fmt: skip
        ax.plot([r["answer_length"]], [100 * r["summary"]["ar"]["accuracy"]["mean"]], "*", color=color, ms=12,
                markeredgecolor="tab:orange", label=f"AR {fmt}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("forwards per problem")
    ax.set_ylabel("held-out exact match (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title("accuracy vs denoising steps", fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, seeds=2)
    parser.add_argument("--n-digits", type=int, default=2)
    parser.add_argument("--m-digits", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--lrs", default="1e-3,3e-3", help="learning-rate sweep (seed 0, validation set)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes over (format, model) pairs")
    parser.add_argument("--formats", default=",".join(FORMATS), help="for development; the report needs both")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.lrs, args.test_size, args.seeds = 20, "3e-3,1e-2", 24, min(args.seeds, 2)
        args.batch_size, args.hidden, args.layers = 16, 32, 1
    args.lr_list = [float(x) for x in args.lrs.split(",")]
    args.backbone = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                         intermediate_size=3 * args.hidden)  # fmt: skip
    setup(args.threads)
    command = "python experiments/diffusion_of_thought.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.time()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    jobs = [(fmt, kind, args) for fmt in formats for kind in ("mdm", "ar")]
    parts = run_parallel(run_kind, jobs, args.jobs)  # one process per (format, kind), one thread each
    by_job = {(fmt, kind): part for (fmt, kind, _), part in zip(jobs, parts)}
    results = {fmt: collect_format(fmt, {k: by_job[fmt, k] for k in ("mdm", "ar")}, args) for fmt in formats}
    cpu_s = sum(r["cpu_s"] for part in parts for r in part["sweep"] + part["runs"][1:])
    wall = round(time.time() - start, 1)
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    data = {"command": command, "wall_s": wall, "cpu_s": round(cpu_s, 1), "config": config, "formats": results}
    if set(formats) != set(FORMATS):
        print({f: results[f]["summary"] for f in formats})
        return 0
    write_results("diffusion_of_thought", report(results, args, command, wall, cpu_s), data, plot(results, args),
                  Path(args.out_dir))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
