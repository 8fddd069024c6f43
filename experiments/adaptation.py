"""AR -> diffusion adaptation (DiffuLLaMA, Gong et al. 2024, arXiv:2410.17891) on the clock walk.

Does a masked diffusion model (MDM) started from the weights of the trained autoregressive twin learn the clock walk
(experiments/planning.py) in fewer steps than one trained from scratch on the same budget?

1. The AR twin: `LLaDAModelLM` trained with a causal 4-D mask and next-token loss (as in planning.py).
2. Conversion: its weights are copied into a `LlamaForCausalLM` and back with
   `llada_hf.training.convert_llama_to_llada` (the package's path for real Llama checkpoints; here the architectures
   are the same, so this is an identity on the weights, and the script asserts that the converted model reproduces
   the twin's causal logits). What changes is the training: the converted model continues as an MDM with the
   package's `sft_loss`, and for the first `--anneal-steps` steps attends through `annealed_attention_mask` (causal
   at step 0, the window above the diagonal opening linearly to full bidirectional attention), as
   `DiffusionTrainer(attention_anneal_steps=...)` does. DiffuLLaMA also shifts the logits (position i-1 predicts
   token i, as the AR model was trained); the package's MDMs are unshifted, so the adapted model here has to move its
   predictions one position (not done here).
3. The MDM from scratch: same loop, same batches, same budget, no annealing.

Accuracy (whole answer, first token) is measured on a validation set at checkpoints along training; the learning
rate of the adapted model is picked on validation (final accuracy, then the mean over checkpoints); the scratch MDM's
and the AR twin's learning rates are the ones planning.py picked on validation for this task (1e-3 each, at 1500
steps) unless `--scratch-lrs` asks for a sweep. Test accuracy (500 held-out walks) is reported at the end and along
training (steps to reach 50 % / 90 %). `--ablation-seeds n` adds adapted runs without annealing (bidirectional from
the first step).

    python experiments/adaptation.py --seeds 2 --jobs 4   # full run (see results/adaptation.md for its time)
    python experiments/adaptation.py --quick          # seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Backbone,
    ar_decode,
    ar_logits,
    build_model,
    common_arguments,
    fmt_pct,
    markdown_table,
    mdm_decode,
    mean_std,
    new_figure,
    run_parallel,
    setup,
    to_llama,
    train,
    write_results,
)
from planning import ClockWalk  # noqa: E402

from llada_hf import LLaDAModelLM  # noqa: E402
from llada_hf.training import convert_llama_to_llada  # noqa: E402

BACKBONE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=192)  # planning.py's
VARIANTS = ("scratch", "adapted", "adapted_no_anneal")
LABELS = {
    "scratch": "MDM from scratch",
    "adapted": "MDM from AR twin, annealed attention",
    "adapted_no_anneal": "MDM from AR twin, no annealing (ablation)",
}


def convert_twin(ar_model: LLaDAModelLM, check: torch.LongTensor | None = None) -> LLaDAModelLM:
    """AR twin -> Llama -> `convert_llama_to_llada` (mask id kept); with `check` ids, assert the converted model's
    causal logits equal the twin's (the conversion must not change what the AR model computes)."""
    config = ar_model.config
    llada = convert_llama_to_llada(to_llama(ar_model), mask_token_id=config.mask_token_id)
    llada.generation_config.update(**{k: getattr(ar_model.generation_config, k) for k in
                                      ("mask_token_id", "eos_token_id", "pad_token_id", "eot_token_id")})  # fmt: skip
    if check is not None:
        with torch.no_grad():
            difference = (ar_logits(llada, check) - ar_logits(ar_model, check)).abs().max().item()
        if difference > 1e-4:
            raise AssertionError(f"converted model differs from the AR twin under the causal mask: {difference:.2e}")
    return llada


def train_mdm(
    model: LLaDAModelLM,
    next_batch,
    steps: int,
    lr: float,
    seed: int,
    anneal_steps: int = 0,
    eval_every: int = 0,
    evaluate=None,
    **kwargs,
) -> dict:
    """`common.train`'s MDM loop with attention annealing over the first `anneal_steps` steps and `evaluate(model)`
    every `eval_every` steps (and at step 0)."""
    return train(model, "mdm", next_batch, steps, lr, seed, anneal_steps=anneal_steps, eval_every=eval_every,
                 evaluate=evaluate, **kwargs)  # fmt: skip


@torch.no_grad()
def accuracy(model: LLaDAModelLM, kind: str, task: ClockWalk, prompts, answers) -> dict[str, float]:
    n = task.path_length
    if kind == "ar":
        output = ar_decode(model, prompts, task.answer_length)
    else:
        output = mdm_decode(model, prompts, task.answer_length)[0]
    correct = output[:, :n] == answers[:, :n]
    return {"path": float(correct.all(-1).float().mean()), "first": float(correct[:, 0].float().mean())}


def steps_to(curve: list[dict], key: str, level: float) -> int | None:
    """First checkpoint step whose `key` accuracy reaches `level` (None: never within the budget)."""
    return next((point["step"] for point in curve if point[key] >= level), None)


def run_variant(variant: str, seed: int, lr: float, args, task: ClockWalk, ar_model, splits: dict) -> dict:
    if variant == "scratch":
        model = build_model(Backbone(**BACKBONE), task.vocab_size, task.prompt_length + task.answer_length, seed)
    else:
        model = convert_twin(ar_model)
    anneal = args.anneal_steps if variant == "adapted" else 0

    def evaluate(m):
        return {
            f"{split}_{k}": v for split, data in splits.items() for k, v in accuracy(m, "mdm", task, *data).items()
        }

    record = train_mdm(model, task.batches(args.batch_size, seed), args.steps, lr, seed, anneal, args.eval_every,
                       evaluate, warmup=min(100, args.steps // 10))  # fmt: skip
    final = record["curve"][-1]
    record.update(variant=variant, seed=seed, lr=lr, **{k: v for k, v in final.items() if k != "step"})
    record.update(
        {f"steps_to_{int(100 * level)}": steps_to(record["curve"], "test_path", level) for level in (0.5, 0.9)}
    )
    print(
        f"  {variant} seed {seed} lr {lr:g}: loss {record['final_loss']:.3f} "
        f"test path {100 * record['test_path']:.1f} "
        f"first {100 * record['test_first']:.1f} validation path {100 * record['validation_path']:.1f} "
        f"steps to 50/90 % {record['steps_to_50']}/{record['steps_to_90']} ({record['train_s']} s)",
        flush=True,
    )
    return record


def select(records: list[dict]) -> dict:
    """Validation only: final whole-answer accuracy, then the mean over checkpoints (faster learning), then loss."""

    def key(r: dict) -> tuple:
        return r["validation_path"], statistics.fmean(p["validation_path"] for p in r["curve"]), -r["final_loss"]

    return max(records, key=key)


def _context(args) -> tuple[ClockWalk, dict]:
    task = ClockWalk(args.positions)
    splits = {
        "validation": task.sample(args.val_size, torch.Generator().manual_seed(20_000)),
        "test": task.sample(args.test_size, torch.Generator().manual_seed(10_000)),
    }
    return task, splits


def _ar_job(seed: int, args) -> tuple[dict, dict]:
    """Train the seed's AR twin; return its record and weights (the adapted MDMs start from them)."""
    setup(args.threads)
    task, splits = _context(args)
    ar_model = build_model(Backbone(**BACKBONE), task.vocab_size, task.prompt_length + task.answer_length, seed)
    cpu = time.process_time()
    record = train(ar_model, "ar", task.batches(args.batch_size, seed), args.steps, args.ar_lr, seed,
                   warmup=min(100, args.steps // 10))  # fmt: skip
    test_prompts, test_answers = splits["test"]
    convert_twin(ar_model, check=torch.cat([test_prompts[:16], test_answers[:16]], dim=1))  # asserts equality
    record["cpu_s"] = round(time.process_time() - cpu, 1)
    scores = accuracy(ar_model, "ar", task, *splits["test"])
    record.update(seed=seed, lr=args.ar_lr, **{f"test_{k}": v for k, v in scores.items()})
    print(f"  AR twin seed {seed}: loss {record['final_loss']:.3f} test path {100 * record['test_path']:.1f} first "
          f"{100 * record['test_first']:.1f} ({record['train_s']} s); conversion exact", flush=True)  # fmt: skip
    return record, ar_model.state_dict()


def _variant_job(variant: str, seed: int, lr: float, args, ar_state: dict | None) -> dict:
    setup(args.threads)
    task, splits = _context(args)
    ar_model = None
    if ar_state is not None:
        ar_model = build_model(Backbone(**BACKBONE), task.vocab_size, task.prompt_length + task.answer_length, seed)
        ar_model.load_state_dict(ar_state)
    return run_variant(variant, seed, lr, args, task, ar_model, splits)


def _run_job(kind: str, *call):
    return _ar_job(*call) if kind == "ar" else _variant_job(*call)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--positions", type=int, default=5, help="clock-walk positions")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every model (AR twin and MDMs)")
    parser.add_argument("--ar-lr", type=float, default=1e-3, help="AR twin (planning.py's validation pick)")
    parser.add_argument("--scratch-lrs", default="1e-3", help="MDM from scratch (planning.py's validation pick)")
    parser.add_argument("--adapted-lrs", default="3e-4,1e-3", help="adapted MDM: swept on validation, seed 0")
    parser.add_argument("--anneal-steps", type=int, default=300, help="causal -> bidirectional over these steps")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--ablation-seeds", type=int, default=0, help="seeds of the adapted-without-annealing runs")
    parser.add_argument("--jobs", type=int, default=1, help="training processes at once (each --threads threads)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=500)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.anneal_steps, args.adapted_lrs = 10, 5, 5, "1e-3,3e-3"
        args.seeds, args.val_size, args.test_size, args.ablation_seeds = min(args.seeds, 1), 16, 16, 1
    setup(args.threads)
    command = "python experiments/adaptation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.time()
    lrs = {"scratch": [float(x) for x in args.scratch_lrs.split(",")],
           "adapted": [float(x) for x in args.adapted_lrs.split(",")]}  # fmt: skip
    seeds = range(args.seeds)
    # Two phases of independent runs: (1) the AR twins and the scratch MDMs, (2) the MDMs started from the twins.
    # Every seed runs at every learning rate of its grid (in parallel with --jobs); the rate is picked on seed 0's
    # validation accuracy and the other seeds are reported at that rate (their other runs are in the JSON).
    calls = [(seed, args) for seed in seeds]
    n_ar = len(calls)
    scratch_calls = [("scratch", seed, lr, args, None) for seed in seeds for lr in lrs["scratch"]]
    jobs = [("ar", *call) for call in calls] + [("mdm", *call) for call in scratch_calls]
    results = run_parallel(_run_job, jobs, args.jobs)
    ar_results, grid = results[:n_ar], results[n_ar:]
    ar_runs, ar_states = [r for r, _ in ar_results], [state for _, state in ar_results]
    calls = [("adapted", seed, lr, args, ar_states[seed]) for seed in seeds for lr in lrs["adapted"]]
    calls += [("adapted_no_anneal", seed, lr, args, ar_states[seed])
              for seed in range(min(args.ablation_seeds, args.seeds)) for lr in lrs["adapted"]]  # fmt: skip
    grid += run_parallel(_run_job, [("mdm", *call) for call in calls], args.jobs)
    sweep = {v: [r for r in grid if r["variant"] == v and r["seed"] == 0] for v in ("scratch", "adapted")}
    best_lr = {v: select(sweep[v])["lr"] for v in sweep}
    best_lr["adapted_no_anneal"] = best_lr["adapted"]  # the ablation differs from "adapted" in annealing only
    runs = {v: [r for r in grid if r["variant"] == v and r["lr"] == best_lr[v]] for v in VARIANTS}
    runs = {v: sorted(rs, key=lambda r: r["seed"]) for v, rs in runs.items() if rs}
    variants = list(runs)
    wall = round(time.time() - start, 1)
    cpu = round(sum(r["cpu_s"] for r in ar_runs) + sum(r["cpu_s"] for r in grid), 1)
    summary = {v: {k: mean_std([r[k] for r in runs[v]]) for k in ("test_path", "test_first", "final_loss")}
               for v in variants}  # fmt: skip
    summary["ar_twin"] = {k: mean_std([r[k] for r in ar_runs]) for k in ("test_path", "test_first", "final_loss")}
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    data = {"command": command, "wall_s": wall, "cpu_s": cpu, "config": config, "best_lr": best_lr,
            "ar_runs": ar_runs, "runs": runs,
            "sweep": {v: [{k: r[k] for k in ("lr", "validation_path", "test_path", "final_loss")} for r in rs]
                      for v, rs in sweep.items()}, "summary": summary, "grid": grid}  # fmt: skip
    write_results("adaptation", render(data, args), data, plot(data, variants), Path(args.out_dir))
    return 0


def _steps(values: list[int | None], budget: int) -> str:
    reached = [v for v in values if v is not None]
    text = f"{statistics.fmean(reached):.0f}" if reached else "never"
    return text + (f" ({len(reached)}/{len(values)} seeds)" if len(reached) != len(values) else "")


def render(data: dict, args) -> str:
    variants = list(data["runs"])
    rows = [["AR twin (reference, left to right)", f"{args.ar_lr:g}", fmt_pct(data["summary"]["ar_twin"]["test_path"]),
             fmt_pct(data["summary"]["ar_twin"]["test_first"]), "-", "-"]]  # fmt: skip
    for v in variants:
        s = data["summary"][v]
        rows.append([LABELS[v], f"{data['best_lr'][v]:g}", fmt_pct(s["test_path"]), fmt_pct(s["test_first"]),
                     _steps([r["steps_to_50"] for r in data["runs"][v]], args.steps),
                     _steps([r["steps_to_90"] for r in data["runs"][v]], args.steps)])  # fmt: skip
    seed_rows = [[LABELS[v], r["seed"], f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['test_path']:.1f}",
                  f"{100 * r['test_first']:.1f}", r["steps_to_50"], r["steps_to_90"], r["train_s"]]
                 for v in variants for r in data["runs"][v]]  # fmt: skip
    seed_rows += [["AR twin", r["seed"], f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['test_path']:.1f}",
                   f"{100 * r['test_first']:.1f}", "-", "-", r["train_s"]] for r in data["ar_runs"]]  # fmt: skip
    sweep_rows = [[LABELS[v], f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['validation_path']:.1f}",
                   "**selected**" if r["lr"] == data["best_lr"][v] else ""]
                  for v, rs in data["sweep"].items() for r in rs]  # fmt: skip
    return (
        f"# AR -> diffusion adaptation on the clock walk\n\n`{data['command']}` ({data['wall_s']:.0f} s wall with "
        f"{args.jobs} process(es) of {args.threads} thread(s); {data['cpu_s']:.0f} s CPU time in all)\n\n"
        f"Clock walk, {args.positions} positions; every model {args.steps} steps x batch "
        f"{args.batch_size} fresh walks (the same batches per seed), backbone {BACKBONE}. The adapted MDMs start from "
        f"the seed's trained AR twin (converted with `convert_llama_to_llada`, causal logits checked equal) and "
        f"anneal the attention from causal to bidirectional over the first {args.anneal_steps} steps. Test: "
        f"{args.test_size} held-out walks, whole-answer and first-token accuracy (%), mean ± sample std over "
        f"{args.seeds} seed(s); steps to 50 % / 90 %: first checkpoint (every {args.eval_every} steps) whose test "
        f"whole-answer accuracy reaches it, mean over the seeds that reach it.\n\n"
        + markdown_table(
            ["model", "lr", "whole answer", "first token", "MDM steps to 50 %", "MDM steps to 90 %"], rows
        )
        + "\nPer seed:\n\n"
        + markdown_table(
            ["model", "seed", "lr", "final loss", "whole answer", "first token", "to 50 %", "to 90 %", "train s"],
            seed_rows,
        )  # fmt: skip
        + "\nLearning-rate sweep (seed 0, selected by final validation whole-answer accuracy, then its mean over "
        "checkpoints):\n\n" + markdown_table(["model", "lr", "final loss", "validation whole answer", ""], sweep_rows)
    )


def plot(data: dict, variants: list[str]):
    fig, axes = new_figure(ncols=1, width=6.0)
    ax = axes[0][0]
    for v, color in zip(variants, ("tab:blue", "tab:green", "tab:olive")):
        curves = [r["curve"] for r in data["runs"][v]]
        steps = [p["step"] for p in curves[0]]
        values = torch.tensor([[100 * p["test_path"] for p in c] for c in curves])
        mean = values.mean(0)
        std = values.std(0) if len(curves) > 1 else torch.zeros_like(mean)
        ax.plot(steps, mean, color=color, label=LABELS[v])
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    ax.axhline(100 * data["summary"]["ar_twin"]["test_path"]["mean"], color="tab:orange", linestyle="--",
               label="AR twin (end of its training)")  # fmt: skip
    ax.set_xlabel("MDM training step")
    ax.set_ylabel("test whole-answer accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"AR -> MDM adaptation, clock walk ({len(data['ar_runs'])} seeds)", fontsize=10)
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
