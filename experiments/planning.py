"""Planning: tasks whose first answer token depends on the last one, solved backwards from the goal.

Two tasks, both "given the moves/edges and the goal, output the route": backwards every step is one easy operation,
left to right the first token needs the whole chain. A masked diffusion model (MDM) may fill the answer in any order
(the sampler commits its most confident predictions first: it can start at the goal); the autoregressive twin (AR)
must commit the first token first, and teacher forcing lets it learn every later step without ever learning the
first one (the "Clever Hans" shortcut of Bachmann & Nagarajan 2024), so it is expected to stay near chance there.

* clock walk: positions x_1..x_n on a 10-hour clock with x_{i+1} = x_i + k_i (mod 10). The prompt gives the moves
  k_1..k_{n-1} and the goal x_n; the answer is x_1..x_n. Backwards, x_i = x_{i+1} - k_i (one subtraction of tokens
  at fixed offsets); forwards, x_1 = x_n - (k_1 + ... + k_{n-1}). Chance for x_1: 10 %.

      <bos> 3 9 0 4 <goal> 7 = 1 4 3 3 7 <eos>

* star graph (Bachmann & Nagarajan): a centre with `degree` arms of `arm_length` nodes; the prompt lists the directed
  edges in random order, then start (the centre) and goal (the end of one arm); the answer is the arm, centre
  excluded. Backwards each step is an in-context edge look-up. Chance for the first node: 1 / degree.

      <bos> 7 12 | 3 9 | 12 4 | ... | <start> 7 <goal> 4 = 12 4 <eos>        (node ids random per graph)

Both models share backbone, fresh training examples (the same batches), steps and training loop (SFT: the prompt is
never a target); the MDM uses the package's `sft_loss` and `generate()` (one token per step, low-confidence
remasking), the AR twin a causal mask, next-token loss and greedy decoding. Clock walk: learning rate per model from a
small sweep (seed 0, on a validation set). Star graph: one learning rate for both, no sweep (one 16k-step run costs
~10 min on a CPU core, and at that budget the MDM has not learnt the in-context edge look-up yet: see
experiments/README.md). Test: 500 held-out examples.
Each task writes its own `results/planning_<task>.{md,json,png}`.

    python experiments/planning.py --tasks clock --seeds 3     # ~10 min on one CPU core
    python experiments/planning.py --tasks star --seeds 3      # ~1 h on one CPU core
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
    BOS,
    EOS,
    FIRST_FREE_ID,
    Backbone,
    ar_decode,
    build_model,
    common_arguments,
    fmt_pct,
    markdown_table,
    mdm_decode_order,
    mean_std,
    new_figure,
    setup,
    sft_batches,
    train,
    write_results,
)

EDGE_SEP, START, GOAL, ANSWER_SEP = FIRST_FREE_ID, FIRST_FREE_ID + 1, FIRST_FREE_ID + 2, FIRST_FREE_ID + 3
FIRST_NODE = FIRST_FREE_ID + 4
METRICS = ("first_token_accuracy", "path_accuracy", "before_goal_accuracy")


class StarGraphs:
    """Random star graphs over `num_nodes` node tokens, as (prompt, answer) token tensors."""

    def __init__(self, degree: int, arm_length: int, num_nodes: int) -> None:
        if 1 + degree * arm_length > num_nodes:
            raise ValueError("num_nodes must be >= 1 + degree * arm_length")
        self.degree, self.arm_length, self.num_nodes = degree, arm_length, num_nodes
        self.vocab_size = FIRST_NODE + num_nodes
        self.prompt_length = 1 + 3 * degree * arm_length + 5
        self.path_length = arm_length
        self.answer_length = arm_length + 1  # the path and EOS

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(prompts (B, prompt_length), answers (B, arm_length + 1)); answers end with EOS."""
        d, length = self.degree, self.arm_length
        nodes = torch.rand(batch_size, self.num_nodes, generator=generator).argsort(-1)[:, : 1 + d * length]
        nodes = nodes + FIRST_NODE
        centre, arms = nodes[:, 0], nodes[:, 1:].view(batch_size, d, length)
        parents = torch.cat([centre[:, None, None].expand(-1, d, 1), arms[:, :, :-1]], dim=2)
        edges = torch.stack([parents, arms], dim=-1).view(batch_size, d * length, 2)
        order = torch.rand(batch_size, d * length, generator=generator).argsort(-1)
        edges = torch.gather(edges, 1, order[:, :, None].expand(-1, -1, 2))
        separators = torch.full((batch_size, d * length, 1), EDGE_SEP)
        edge_tokens = torch.cat([edges, separators], dim=-1).flatten(1)
        goal_arm = torch.randint(d, (batch_size,), generator=generator)
        path = arms[torch.arange(batch_size), goal_arm]
        goal = path[:, -1]
        prompts = torch.cat(
            [
                torch.full((batch_size, 1), BOS),
                edge_tokens,
                torch.full((batch_size, 1), START),
                centre[:, None],
                torch.full((batch_size, 1), GOAL),
                goal[:, None],
                torch.full((batch_size, 1), ANSWER_SEP),
            ],
            dim=1,
        )
        answers = torch.cat([path, torch.full((batch_size, 1), EOS)], dim=1)
        return prompts, answers

    def batches(self, batch_size: int, seed: int):
        return sft_batches(self, batch_size, seed)


class ClockWalk:
    """Walks on a clock of `modulus` hours: x_{i+1} = x_i + k_i (mod modulus); given the moves k and the last
    position (the goal), output every position x_1..x_n. Backwards each step is one subtraction; forwards the first
    position needs the goal minus the sum of all the moves."""

    def __init__(self, positions: int, modulus: int = 10) -> None:
        self.positions, self.modulus = positions, modulus
        self.path_length = positions
        self.vocab_size = FIRST_NODE + modulus
        self.prompt_length = 1 + (positions - 1) + 3
        self.answer_length = positions + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.LongTensor, torch.LongTensor]:
        start = torch.randint(self.modulus, (batch_size, 1), generator=generator)
        moves = torch.randint(self.modulus, (batch_size, self.positions - 1), generator=generator)
        path = torch.cat([start, start + moves.cumsum(-1)], dim=1) % self.modulus
        prompts = torch.cat(
            [
                torch.full((batch_size, 1), BOS),
                moves + FIRST_NODE,
                torch.full((batch_size, 1), GOAL),
                path[:, -1:] + FIRST_NODE,
                torch.full((batch_size, 1), ANSWER_SEP),
            ],
            dim=1,
        )
        return prompts, torch.cat([path + FIRST_NODE, torch.full((batch_size, 1), EOS)], dim=1)

    batches = StarGraphs.batches


def evaluate(model, kind: str, task, prompts, answers, batch_size: int = 250) -> dict:
    """First answer token (the branch / start), whole path, the token just before the goal; for the MDM also its
    decoding order: the mean step at which each answer position is committed, and how often the first token is
    committed after every other path token (planning backwards from the goal)."""
    outputs, steps = [], []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        if kind == "mdm":
            output, step = mdm_decode_order(model, batch, task.answer_length)
            steps.append(step)
        else:
            output = ar_decode(model, batch, task.answer_length)
        outputs.append(output)
    n = task.path_length
    correct = torch.cat(outputs)[:, :n] == answers[:, :n]
    record = {
        "first_token_accuracy": float(correct[:, 0].float().mean()),
        "path_accuracy": float(correct.all(-1).float().mean()),
        "before_goal_accuracy": float(correct[:, n - 2].float().mean()),
    }
    if steps:
        step = torch.cat(steps).float()
        record["commit_step"] = [round(v, 3) for v in step.mean(0).tolist()]
        record["first_committed_last"] = float((step[:, 0] > step[:, 1:n].amax(-1)).float().mean())
    return record


def run_one(kind: str, seed: int, lr: float, steps: int, args, task, test, validation=None) -> dict:
    model = build_model(Backbone(**task.backbone), task.vocab_size, task.prompt_length + task.answer_length, seed)
    record = train(model, kind, task.batches(args.batch_size, seed), steps, lr, seed, warmup=min(100, steps // 10))
    record.update(evaluate(model, kind, task, *test))
    if validation is not None:
        record["validation_path_accuracy"] = evaluate(model, kind, task, *validation)["path_accuracy"]
    record.update(kind=kind, seed=seed, lr=lr)
    shown = ", ".join(f"{k} {v}" for k, v in record.items() if k not in ("kind", "seed", "lr"))
    print(f"  {kind} seed {seed} lr {lr:g}: {shown}", flush=True)
    return record


def run_task(task, steps: int, lrs: list[float], args) -> dict:
    """Seed 0 at every lr (selection: validation path accuracy, then training loss), other seeds at the chosen lr."""
    test = task.sample(args.test_size, torch.Generator().manual_seed(10_000))
    validation = task.sample(args.test_size, torch.Generator().manual_seed(20_000)) if len(lrs) > 1 else None
    sweep, runs, best_lr = {}, {}, {}
    for kind in ("mdm", "ar"):
        sweep[kind] = [run_one(kind, 0, lr, steps, args, task, test, validation) for lr in lrs]
        best = max(sweep[kind], key=lambda r: (r.get("validation_path_accuracy", 0.0), -r["final_loss"]))
        best_lr[kind] = best["lr"]
        runs[kind] = [best] + [run_one(kind, s, best["lr"], steps, args, task, test) for s in range(1, args.seeds)]
    summary = {kind: {m: mean_std([r[m] for r in runs[kind]]) for m in METRICS} for kind in runs}
    return {"sweep": sweep if len(lrs) > 1 else None, "runs": runs, "best_lr": best_lr, "summary": summary}


LABELS = {
    "first_token_accuracy": "**first token** (branch / start)",
    "path_accuracy": "whole answer",
    "before_goal_accuracy": "token just before the goal",
}


def task_section(title: str, description: str, result: dict, chance: float) -> str:
    summary = result["summary"]
    rows = [[LABELS[m], fmt_pct(summary["mdm"][m]), fmt_pct(summary["ar"][m])] for m in METRICS]
    seed_rows = [
        [kind.upper(), r["seed"], f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['first_token_accuracy']:.1f}",
         f"{100 * r['path_accuracy']:.1f}", r["train_s"]]
        for kind in ("mdm", "ar") for r in result["runs"][kind]
    ]  # fmt: skip
    text = (
        f"## {title}\n\n{description} Chance for the first token: {100 * chance:.1f} %.\n\n"
        + markdown_table(["answer position", "masked diffusion", "autoregressive"], rows)
        + "\nPer seed:\n\n"
        + markdown_table(["model", "seed", "lr", "final loss", "first token", "whole answer", "train s"], seed_rows)
    )
    mdm_runs = result["runs"]["mdm"]
    if "commit_step" in mdm_runs[0]:
        mean_steps = [
            statistics.fmean(r["commit_step"][i] for r in mdm_runs) for i in range(len(mdm_runs[0]["commit_step"]))
        ]
        order = ", ".join(
            f"{name} {v:.2f}"
            for name, v in zip([*(f"p{i + 1}" for i in range(len(mean_steps) - 1)), "EOS"], mean_steps)
        )
        text += (
            f"\nMDM decoding order (one token per step, {len(mean_steps)} steps): mean step at which each answer "
            f"position is committed (0 = first), over seeds: {order}. The first token is committed after every "
            f"other path token in {fmt_pct(mean_std([r['first_committed_last'] for r in mdm_runs]))} % of test "
            "examples.\n"
        )
    if result["sweep"]:
        sweep_rows = [
            [kind.upper(), f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['validation_path_accuracy']:.1f}",
             f"{100 * r['first_token_accuracy']:.1f}", "**selected**" if r["lr"] == result["best_lr"][kind] else ""]
            for kind in ("mdm", "ar") for r in result["sweep"][kind]
        ]  # fmt: skip
        text += "\nLearning-rate sweep (seed 0; selected by validation whole-answer accuracy, then training loss):\n\n"
        text += markdown_table(["model", "lr", "final loss", "validation whole answer", "test first token", ""],
                               sweep_rows)  # fmt: skip
    return text + "\n"


def plot_task(ax, result: dict, chance: float, title: str) -> None:
    positions = range(len(METRICS))
    for offset, kind, color in ((-0.2, "mdm", "tab:blue"), (0.2, "ar", "tab:orange")):
        means = [100 * result["summary"][kind][m]["mean"] for m in METRICS]
        errors = [100 * result["summary"][kind][m]["std"] for m in METRICS]
        ax.bar([p + offset for p in positions], means, 0.4, yerr=errors, color=color, label=kind.upper())
    ax.axhline(100 * chance, color="gray", linestyle=":", label="chance (first token)")
    ax.set_xticks(list(positions), ["first token", "whole answer", "before goal"])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 125)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.set_title(title, fontsize=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--tasks", default="clock,star", help="comma-separated: clock, star (one result file each)")
    parser.add_argument("--clock-positions", type=int, default=5)
    parser.add_argument("--clock-steps", type=int, default=1500)
    parser.add_argument("--clock-lrs", default="3e-4,1e-3,3e-3", help="learning-rate sweep for the clock walk")
    parser.add_argument("--star-degree", type=int, default=2)
    parser.add_argument("--star-arm-length", type=int, default=3)
    parser.add_argument("--star-nodes", type=int, default=8, help="node tokens; each graph uses a random subset")
    parser.add_argument("--star-layers", type=int, default=2)
    parser.add_argument("--star-steps", type=int, default=16000)
    parser.add_argument("--star-lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=500)
    args = parser.parse_args(argv)
    backbone = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=192)
    if args.quick:
        args.clock_steps, args.star_steps, args.clock_lrs = 60, 20, "3e-3"
        args.seeds, args.test_size = min(args.seeds, 1), 50
    setup(args.threads)
    command = "python experiments/planning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        start = time.time()
        if name == "clock":
            task, steps, lrs, chance = ClockWalk(args.clock_positions), args.clock_steps, args.clock_lrs, 1 / 10
            task.backbone = backbone
            print(f"clock walk: {args.clock_positions} positions, length {task.prompt_length + task.answer_length}")
            result = run_task(task, steps, [float(x) for x in lrs.split(",")], args)
            title, plot_title = "Clock walk", f"Clock walk, {args.clock_positions} positions ({args.seeds} seeds)"
            description = (
                f"{args.clock_positions} positions ({args.clock_positions - 1} moves), {steps} steps x batch "
                f"{args.batch_size} fresh walks, backbone {backbone}. Accuracy (%), mean ± sample std over "
                f"{args.seeds} seed(s) at each model's selected learning rate ({result['best_lr']['mdm']:g} MDM, "
                f"{result['best_lr']['ar']:g} AR)."
            )
        elif name == "star":
            task = StarGraphs(args.star_degree, args.star_arm_length, args.star_nodes)
            task.backbone = {**backbone, "num_hidden_layers": args.star_layers}
            steps, chance = args.star_steps, 1 / args.star_degree
            print(f"star graphs: degree {args.star_degree}, arm length {args.star_arm_length}, "
                  f"length {task.prompt_length + task.answer_length}")  # fmt: skip
            result = run_task(task, steps, [args.star_lr], args)
            title = "Star graph"
            plot_title = f"Star graph d={args.star_degree}, l={args.star_arm_length} ({args.seeds} seeds)"
            description = (
                f"Degree {args.star_degree}, arm length {args.star_arm_length}, {args.star_nodes} node tokens, "
                f"{steps} steps x batch {args.batch_size} fresh graphs, lr {args.star_lr:g} for both (no sweep: one "
                f"run costs ~10 min here), backbone {task.backbone}. Accuracy (%), mean ± sample std over "
                f"{args.seeds} seed(s)."
            )
        else:
            raise SystemExit(f"unknown task {name!r}: use clock or star")
        wall = round(time.time() - start, 1)
        markdown = (
            f"# Planning: {title.lower()}\n\n`{command}` ({wall:.0f} s for this task, {args.threads} thread(s))\n\n"
            + task_section(title, description, result, chance)
        )
        fig, axes = new_figure(ncols=1, width=5.0)
        plot_task(axes[0][0], result, chance, plot_title)
        data = {"command": command, "task": name, "wall_s": wall, "config": config, **result}
        write_results(f"planning_{name}", markdown, data, fig, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
