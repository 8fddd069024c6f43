"""Star graph revisited: why the masked diffusion model (MDM) landed below chance, and a setup that learns it.

`experiments/planning.py --tasks star` (results/planning_star.md) gave the MDM 26.9 % on the first answer token
where the branch is a coin flip (50 %) for anyone who knows the centre's two children. This script measures what a
trained MDM does instead of guessing between them:

* the decoding order (step at which each answer position is committed, one token per step, low confidence);
* what the wrong first tokens are (the other branch, the centre, the goal, the rest of the goal's arm, a node of the
  other arm, a node not in the graph);
* the first token decoded first (left to right) and last (right to left, from the goal), and with an oracle: the
  rest of the answer given, so only one backward edge look-up is left (`p1 | p2`);
* the single look-ups the answer needs: the goal copy (`p3`), one backward hop (`p2 | p3`), one forward hop
  (`p2 | p1`), the branch from the prompt alone (`p1 | -`).

It trains every MDM setting of `--settings` (loss:lr) and the AR twin over seeds on the same batches, picks the MDM
setting on validation graphs (seed 0; never the test set) and reports all of them on planning.py's test graphs. The
loss estimators:

* `sft`: the package's `sft_loss` (t ~ U(0, 1), each answer token masked with probability t, CE weighted by 1 / t);
* `count`: the same ELBO with the lower-variance estimator of the LLaDA paper (Eq. 6, used by
  `llada_hf.likelihood`): draw the number of masked answer tokens k ~ U{1..L}, mask k of them, weight L / k. Both
  are unbiased for the same bound; with L = 4 answer tokens the 1 / t weight reaches 1000 (t = eps) where L / k is
  at most 4, so the gradient is far less noisy (tests/test_exp_star_adapt.py measures both).

The results (results/star_revisited.md; the 500-step diagnostic run is results/star_revisited_500steps.md):

    python experiments/star_revisited.py --seeds 2 --jobs 2 --steps 8000 --settings sft:2e-3,count:2e-3,count:1e-3 \
        --out-dir A                                          # 2164 s wall, 2 processes
    python experiments/star_revisited.py --seeds 2 --first-seed 2 --jobs 2 --steps 8000 \
        --settings sft:2e-3,count:2e-3 --out-dir B           # 1438 s: seeds 2, 3
    python experiments/star_revisited.py --merge A/star_revisited.json B/star_revisited.json   # one 4-seed report
    python experiments/star_revisited.py --quick                # seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    MASK,
    Backbone,
    ar_decode,
    build_model,
    common_arguments,
    fmt_pct,
    markdown_table,
    mdm_decode_order,
    mean_std,
    new_figure,
    run_parallel,
    setup,
    train,
    write_results,
)
from planning import StarGraphs  # noqa: E402

from llada_hf.training import diffusion_loss  # noqa: E402

CATEGORIES = ("correct", "other branch", "centre", "goal", "rest of goal arm", "other arm, deeper", "not in graph")


# ---------------------------------------------------------------------------------------------------------------------
# Losses


def count_sft_loss(
    model, input_ids: torch.LongTensor, prompt_lengths: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """SFT diffusion loss with the mask-count estimator: k ~ U{1..L} answer tokens masked (a uniform k-subset),
    CE weighted by L / k, normalised by L. Unbiased for the same ELBO as `sft_loss`, weights bounded by L."""
    b, length = input_ids.shape
    prompt_length = int(prompt_lengths[0])
    if not bool((prompt_lengths == prompt_length).all()):
        raise ValueError("count_sft_loss expects one prompt length per batch")
    answer = length - prompt_length
    k = torch.randint(1, answer + 1, (b,), generator=generator)
    ranks = torch.rand(b, answer, generator=generator).argsort(-1).argsort(-1)  # a uniform permutation's ranks
    masked = torch.zeros(b, length, dtype=torch.bool)
    masked[:, prompt_length:] = ranks < k[:, None]
    noisy = torch.where(masked, MASK, input_ids)
    labels = torch.where(masked, input_ids, -100)
    p_mask = (k.float() / answer)[:, None].expand(b, length)
    return diffusion_loss(model(input_ids=noisy).logits, labels, p_mask, torch.full((b,), float(answer)))


def train_model(model, kind: str, loss: str, task: StarGraphs, steps: int, lr: float, seed: int, batch_size: int):
    """`common.train` (the MDM with the package's `sft_loss`, the AR twin) or the same loop with `count_sft_loss`."""
    batches = task.batches(batch_size, seed)
    warmup = min(100, steps // 10)
    loss_fn = count_sft_loss if kind == "mdm" and loss == "count" else None
    return train(model, kind, batches, steps, lr, seed, warmup=warmup, log_every=max(steps // 8, 1), loss_fn=loss_fn)


# ---------------------------------------------------------------------------------------------------------------------
# Diagnostics


@torch.no_grad()
def fill_in_order(model, prompts: torch.LongTensor, canvas: torch.LongTensor, order: list[int]) -> torch.LongTensor:
    """Fill the MASK positions of `canvas` one per forward in the given order (greedy): a forced decoding order."""
    x = torch.cat([prompts, canvas], dim=1).clone()
    start = prompts.shape[1]
    for position in order:
        column = x[:, start + position]
        logits = model(input_ids=x).logits[:, start + position].float()
        logits[:, MASK] = -float("inf")
        x[:, start + position] = torch.where(column == MASK, logits.argmax(-1), column)
    return x[:, start:]


def graph_parts(task: StarGraphs, prompts: torch.LongTensor) -> dict[str, torch.Tensor]:
    """Parse the prompt back into edges (B, E, 2), centre (B,) and goal (B,)."""
    edges = prompts[:, 1 : 1 + 3 * task.degree * task.arm_length].reshape(len(prompts), -1, 3)[..., :2]
    return {"edges": edges, "centre": prompts[:, -4], "goal": prompts[:, -2]}


def first_token_categories(task: StarGraphs, prompts, answers, first: torch.LongTensor) -> dict[str, float]:
    """Fraction of examples whose predicted first node is each of `CATEGORIES` (they partition the examples)."""
    parts = graph_parts(task, prompts)
    edges, centre, goal = parts["edges"], parts["centre"], parts["goal"]
    children_of_centre = torch.where(edges[..., 0] == centre[:, None], edges[..., 1], -1)
    in_graph = (edges == first[:, None, None]).flatten(1).any(-1) | (first == centre)
    path = answers[:, : task.path_length]
    correct = first == path[:, 0]
    branch = (children_of_centre == first[:, None]).any(-1) & ~correct
    is_centre, is_goal = first == centre, (first == goal) & ~correct
    rest = (path[:, 1:-1] == first[:, None]).any(-1) & ~correct & ~is_goal
    deeper = in_graph & ~(correct | branch | is_centre | is_goal | rest)
    groups = [correct, branch, is_centre, is_goal, rest, deeper, ~in_graph]
    return {name: float(g.float().mean()) for name, g in zip(CATEGORIES, groups)}


@torch.no_grad()
def diagnose(model, kind: str, task: StarGraphs, prompts, answers) -> dict:
    """Accuracy, wrong-first-token categories and (MDM) decoding order, forced orders and single look-ups."""
    n = task.path_length
    path = answers[:, :n]
    record = {}
    if kind == "ar":
        output = ar_decode(model, prompts, task.answer_length)
    else:
        output, step = mdm_decode_order(model, prompts, task.answer_length)
        step = step.float()
        record["commit_step"] = [round(v, 3) for v in step.mean(0).tolist()]
        record["first_committed_first"] = float((step[:, 0] < step[:, 1:n].amin(-1)).float().mean())
        record["first_committed_last"] = float((step[:, 0] > step[:, 1:n].amax(-1)).float().mean())
        blank = torch.full_like(answers, MASK)
        right_to_left = fill_in_order(model, prompts, blank, list(range(task.answer_length))[::-1])
        left_to_right = fill_in_order(model, prompts, blank, list(range(task.answer_length)))
        record["first_token_right_to_left"] = float((right_to_left[:, 0] == path[:, 0]).float().mean())
        record["path_right_to_left"] = float((right_to_left[:, :n] == path).all(-1).float().mean())
        record["first_token_left_to_right"] = float((left_to_right[:, 0] == path[:, 0]).float().mean())

        def one(position: int, given: list[int]) -> float:  # one forward: `position` given the answer at `given`
            canvas = blank.clone()
            canvas[:, given] = answers[:, given]
            filled = fill_in_order(model, prompts, canvas, [position])
            return float((filled[:, position] == answers[:, position]).float().mean())

        eos = task.answer_length - 1
        record["lookups"] = {
            "p3 (goal copy)": one(n - 1, [eos]),
            "p2 given p3 (backward hop)": one(n - 2, [n - 1, eos]),
            "p2 given p1 (forward hop)": one(1, [0, eos]) if n >= 3 else None,
            "p1 given p2, p3 (oracle rest)": one(0, list(range(1, task.answer_length))),
            "p1 from the prompt only": one(0, []),
        }
    correct = output[:, :n] == path
    record["first_token_accuracy"] = float(correct[:, 0].float().mean())
    record["path_accuracy"] = float(correct.all(-1).float().mean())
    record["first_token_categories"] = first_token_categories(task, prompts, answers, output[:, 0])
    return record


# ---------------------------------------------------------------------------------------------------------------------
# Runs


def run(kind: str, setting: dict, seed: int, args, task: StarGraphs, splits: dict) -> dict:
    backbone = Backbone(
        hidden_size=64, num_hidden_layers=setting["layers"], num_attention_heads=4, intermediate_size=192
    )
    model = build_model(backbone, task.vocab_size, task.prompt_length + task.answer_length, seed)
    record = train_model(model, kind, setting["loss"], task, setting["steps"], setting["lr"], seed, args.batch_size)
    for split, (prompts, answers) in splits.items():
        record[split] = diagnose(model, kind, task, prompts, answers)
    record.update(kind=kind, seed=seed, **setting)
    print(f"  {kind} seed {seed} {setting}: loss {record['final_loss']:.3f} " + ", ".join(
        f"{split} first {100 * record[split]['first_token_accuracy']:.1f} "
        f"path {100 * record[split]['path_accuracy']:.1f}"
        for split in splits
    ), flush=True)  # fmt: skip
    return record


def _job(kind: str, setting: dict, seed: int, args) -> dict:
    setup(args.threads)
    task = StarGraphs(args.degree, args.arm_length, args.nodes)
    splits = {
        "test": task.sample(args.test_size, torch.Generator().manual_seed(10_000)),  # planning.py's test set
        "validation": task.sample(args.val_size, torch.Generator().manual_seed(20_000)),
    }
    start = time.process_time()
    record = run(kind, setting, seed, args, task, splits)
    record["cpu_s"] = round(time.process_time() - start, 1)
    return record


def parse_settings(text: str, steps: int, layers: int) -> dict[str, dict]:
    """ "sft:2e-3,count:2e-3" -> {"sft lr 0.002": {loss, lr, steps, layers}, ...} (MDM training settings)."""
    settings = {}
    for item in text.split(","):
        loss, lr = item.strip().split(":")
        if loss not in ("sft", "count"):
            raise SystemExit(f"unknown loss {loss!r}: use sft or count")
        settings[f"{loss} lr {float(lr):g}"] = dict(loss=loss, lr=float(lr), steps=steps, layers=layers)
    return settings


def _mean(records: list[dict], get) -> float:
    return statistics.fmean(get(r) for r in records)


def render(data: dict, args) -> str:
    names = list(data["mdm"])
    selected = data["selected"]
    s = data["summary"]
    head = [["**first token** (branch, chance 50 %)"], ["whole answer"]]
    for row, metric in zip(head, ("first_token_accuracy", "path_accuracy")):
        row += [fmt_pct(s["mdm"][name][metric]) for name in names] + [fmt_pct(s["ar"][metric])]
    header = ["answer position"] + [f"MDM, {n}" + (" (selected)" if n == selected else "") for n in names] + ["AR"]
    counts = {n: len(data["mdm"][n]) for n in names}
    seeds = f"{len(data['ar'])} seed(s)"
    if set(counts.values()) != {len(data["ar"])}:
        seeds += " (" + ", ".join(f"MDM {n}: {c}" for n, c in counts.items() if c != len(data["ar"])) + ")"
    text = (
        f"# Star graph revisited\n\n`{data['command']}` ({data['wall_s']:.0f} s wall with {args.jobs} process(es) of "
        f"{args.threads} thread(s); {data['cpu_s']:.0f} s CPU time in all)\n\nStar graphs as in planning.py "
        f"(degree {args.degree}, arm length {args.arm_length}, {args.nodes} node tokens, the same 500 test graphs); "
        f"every model {args.steps} steps x batch {args.batch_size}, backbone 64 wide, {args.layers} layers, 4 heads; "
        f"AR lr {args.ar_lr:g}. MDM settings differ in the loss estimator only (`sft`: the package's `sft_loss`; "
        f"`count`: k ~ U{{1..L}} masked answer tokens, weight L / k). Selected on seed 0's validation accuracy "
        f"(500 other graphs): {selected}. Accuracy (%), mean ± sample std over {seeds}. The first run "
        f"(16000 steps, `sft`, 26.9 % vs AR 66.9 %) stays in results/planning_star.md.\n\n"
        + markdown_table(header, head)
    )
    rows = []
    models = [(f"MDM, {n}", data["mdm"][n]) for n in names] + [("AR", data["ar"])]
    for label, records in models:
        cats = [fmt_pct(mean_std([r["test"]["first_token_categories"][c] for r in records])) for c in CATEGORIES]
        rows.append([label, *cats])
    text += "\n### What the first token is (test, % of examples)\n\n" + markdown_table(["model", *CATEGORIES], rows)
    rows = []
    for label, records in models[:-1]:
        t = [r["test"] for r in records]
        rows.append([
            label, fmt_pct(mean_std([x["first_token_accuracy"] for x in t])),
            fmt_pct(mean_std([x["first_token_left_to_right"] for x in t])),
            fmt_pct(mean_std([x["first_token_right_to_left"] for x in t])),
            fmt_pct(mean_std([x["path_right_to_left"] for x in t])),
            fmt_pct(mean_std([x["first_committed_first"] for x in t])),
            fmt_pct(mean_std([x["first_committed_last"] for x in t])),
            " / ".join(f"{_mean(t, lambda x, i=i: x['commit_step'][i]):.2f}" for i in range(args.arm_length + 1)),
        ])  # fmt: skip
    text += (
        "\n### Decoding order (MDM, test)\n\nFirst-token accuracy (%) under the default low-confidence order (one "
        "token per step), forced left to right, forced right to left (EOS, goal, then backwards); how often the "
        "default order commits the first token before / after every other path token; mean commit step of "
        "p1 / p2 / p3 / EOS (0 = first).\n\n"
        + markdown_table(
            [
                "model",
                "default",
                "left to right",
                "right to left",
                "whole answer, right to left",
                "p1 committed first",
                "p1 committed last",
                "commit step p1/p2/p3/EOS",
            ],
            rows,
        )  # fmt: skip
    )
    lookups = list(data["mdm"][names[0]][0]["test"]["lookups"])
    rows = [[label, *(fmt_pct(mean_std([r["test"]["lookups"][k] for r in records])) for k in lookups)]
            for label, records in models[:-1]]  # fmt: skip
    text += (
        "\n### Single look-ups (MDM, test, one forward; the rest of the answer masked unless given)\n\n"
        + markdown_table(["model", *lookups], rows)
    )
    seed_rows = [[label, r["seed"], f"{r['lr']:g}", f"{r['final_loss']:.3f}",
                  f"{100 * r['validation']['path_accuracy']:.1f}", f"{100 * r['test']['first_token_accuracy']:.1f}",
                  f"{100 * r['test']['path_accuracy']:.1f}", r["train_s"]]
                 for label, records in models for r in records]  # fmt: skip
    text += "\nPer seed:\n\n" + markdown_table(
        ["model", "seed", "lr", "final loss", "validation whole answer", "test first token", "test whole answer",
         "train s"], seed_rows)  # fmt: skip
    return text


def plot(data: dict):
    fig, axes = new_figure(ncols=3, width=5.5)
    ax = axes[0][0]
    names = list(data["mdm"])
    orders = [("first_token_accuracy", "default"), ("first_token_left_to_right", "left to right"),
              ("first_token_right_to_left", "right to left")]  # fmt: skip
    width = 0.8 / (len(names) + 1)
    for i, name in enumerate(names):
        values = [100 * _mean(data["mdm"][name], lambda r, k=k: r["test"][k]) for k, _ in orders]
        values.append(100 * _mean(data["mdm"][name], lambda r: r["test"]["lookups"]["p1 given p2, p3 (oracle rest)"]))
        ax.bar([p + i * width for p in range(4)], values, width, label=f"MDM {name}")
    ax.bar([0 + len(names) * width], [100 * data["summary"]["ar"]["first_token_accuracy"]["mean"]], width, label="AR")
    ax.axhline(50, color="gray", linestyle=":", label="chance")
    ax.set_xticks([p + 0.4 - width / 2 for p in range(4)], [label for _, label in orders] + ["oracle rest"])
    ax.set_ylabel("first-token accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title("first token by decoding order (test)", fontsize=10)
    ax = axes[0][1]
    models = [(f"MDM {n}", data["mdm"][n]) for n in names] + [("AR", data["ar"])]
    bottom = [0.0] * len(models)
    for category in CATEGORIES:
        values = [100 * _mean(rs, lambda r, c=category: r["test"]["first_token_categories"][c]) for _, rs in models]
        ax.bar(range(len(models)), values, bottom=bottom, label=category)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(models)), [label for label, _ in models], fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("% of test examples")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3)
    ax.set_title("what the first token is", fontsize=10)
    ax = axes[0][2]  # one line per model: the solved runs are the ones whose loss drops away
    for (label, records), color in zip(models, ("C0", "C1", "C2", "C3", "C4")):
        for i, record in enumerate(records):
            steps, losses = zip(*record["loss_curve"]) if record.get("loss_curve") else ((), ())
            ax.plot(steps, losses, color=color, marker=".", label=label if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (each model's estimator)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("training loss, every seed", fontsize=10)
    return fig


def summarise(command: str, wall_s: float, config: dict, mdm: dict, ar: list) -> dict:
    """Results of every setting over its seeds; the MDM setting is selected on seed 0's validation accuracy (None
    in a part without seed 0, `--first-seed` > 0: report it with `--merge`)."""
    seed0 = {name: r for name, records in mdm.items() for r in records if r["seed"] == 0}
    selected = max(seed0, key=lambda n: (seed0[n]["validation"]["path_accuracy"],
                                         seed0[n]["validation"]["first_token_accuracy"]), default=None)  # fmt: skip
    metrics = ("first_token_accuracy", "path_accuracy")
    summary = {
        "mdm": {n: {m: mean_std([r["test"][m] for r in rs]) for m in metrics} for n, rs in mdm.items()},
        "ar": {m: mean_std([r["test"][m] for r in ar]) for m in metrics},
    }
    cpu = round(sum(r["cpu_s"] for rs in [*mdm.values(), ar] for r in rs), 1)
    return {"command": command, "wall_s": round(wall_s, 1), "cpu_s": cpu, "config": config, "selected": selected,
            "summary": summary, "mdm": mdm, "ar": ar}  # fmt: skip


def merge(paths: list[str]) -> tuple[dict, argparse.Namespace]:
    """One report from runs over disjoint seeds (`--first-seed`) of the same settings and budget."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    budget = ("steps", "layers", "degree", "arm_length", "nodes", "batch_size", "ar_lr", "val_size", "test_size")
    for run in runs[1:]:
        if any(run["config"][key] != runs[0]["config"][key] for key in budget):
            raise SystemExit(f"--merge: {budget} must agree between runs")
    mdm = {name: [r for run in runs for r in run["mdm"].get(name, [])] for name in runs[0]["mdm"]}
    ar = [r for run in runs for r in run["ar"]]
    seeds = [r["seed"] for r in ar]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge: seeds overlap ({sorted(seeds)})")
    config = dict(runs[0]["config"], seeds=len(seeds), merged=paths)
    command = " and ".join(run["command"] for run in runs)
    return summarise(command, sum(run["wall_s"] for run in runs), config, mdm, ar), argparse.Namespace(**config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, seeds=2)
    parser.add_argument("--settings", default="sft:2e-3,count:2e-3", help="MDM settings loss:lr (sft or count)")
    parser.add_argument("--ar-lr", type=float, default=2e-3, help="AR twin (planning.py's star-graph rate)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--degree", type=int, default=2)
    parser.add_argument("--arm-length", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=1, help="training processes at once (each --threads threads)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="report runs over disjoint seeds as one")
    args = parser.parse_args(argv)
    if args.merge:
        data, run_args = merge(args.merge)
        write_results("star_revisited", render(data, run_args), data, plot(data), Path(args.out_dir))
        return 0
    if args.quick:
        args.steps, args.seeds, args.val_size, args.test_size = 10, min(args.seeds, 1), 24, 24
    setup(args.threads)
    command = "python experiments/star_revisited.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.time()
    settings = parse_settings(args.settings, args.steps, args.layers)
    ar_setting = dict(loss="sft", lr=args.ar_lr, steps=args.steps, layers=args.layers)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    calls = [("mdm", setting, seed, args) for setting in settings.values() for seed in seeds]
    calls += [("ar", ar_setting, seed, args) for seed in seeds]
    records = run_parallel(_job, calls, args.jobs)
    mdm = {name: records[i * args.seeds : (i + 1) * args.seeds] for i, name in enumerate(settings)}
    ar = records[len(settings) * args.seeds :]
    config = {k: v for k, v in vars(args).items() if k not in ("out_dir", "merge")}
    data = summarise(command, time.time() - start, config, mdm, ar)
    write_results("star_revisited", render(data, args), data, plot(data), Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
