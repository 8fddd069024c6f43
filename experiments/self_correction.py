"""Self-correction at equal forwards: does re-masking low-confidence commits help when decoding fast?

A masked diffusion model can revise what it wrote; an autoregressive one cannot. `generate(remask_budget=b,
remask_threshold=tau)` (ReMDM-conf, Wang et al. 2025, arXiv:2503.00307) masks again, after each step, the earliest
committed token of the current block whose confidence when committed was below tau (at most b per row and block),
and the next step commits one token more, so the number of forwards is unchanged. Committing several tokens per
forward forces guesses; re-masking gives the doubtful ones a second look in a fuller context.

Measured where the plain sampler starts to lose accuracy (see `decoding.py`), under two commit orders: the default
low-confidence order (most confident first) and the official "random" order (uniformly random positions: early
commits are made without context, so there is more to revise), on:

1. the embedded demo model (chat addition, 16-token canvas), held-out operand pairs (one model: no seed spread);
2. clock-walk models trained from scratch (`planning.py`'s task), one per seed.

The re-masked column counts how many tokens the chosen setting actually sent back per answer (0 = it never acted).
(tau, b) is chosen on a validation set (other questions / walks), per task and speed, then reported on the test set.

    python experiments/self_correction.py --seeds 3        # ~20 min on one CPU core
"""

from __future__ import annotations

import argparse
import random
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
    mean_std,
    setup,
    train,
    write_results,
)
from planning import ClockWalk  # noqa: E402

GRID = [(tau, budget) for tau in (0.5, 0.9, 0.99) for budget in (1, 2, 4)]


def run_grid(evaluate, settings: list[tuple[str, int]]) -> dict:
    """Per (confidence rule, steps): plain accuracy and forwards, the validation grid, the chosen (tau, b), its test
    accuracy and how many tokens it re-masked per answer."""
    out = {}
    for rule, steps in settings:
        plain_val, _, _ = evaluate("validation", rule, steps)
        plain_test, nfe, _ = evaluate("test", rule, steps)
        grid = {f"{tau}/{b}": evaluate("validation", rule, steps, tau=tau, budget=b)[0] for tau, b in GRID}
        best = max(grid, key=lambda key: (grid[key], -float(key.split("/")[1])))  # ties: the smaller budget
        tau, budget = float(best.split("/")[0]), int(best.split("/")[1])
        test, nfe_sc, remasked = evaluate("test", rule, steps, tau=tau, budget=budget)
        assert nfe_sc == nfe  # equal forwards by construction
        out[f"{rule}/{steps}"] = dict(rule=rule, steps=steps, plain_validation=plain_val, plain=plain_test,
                                      forwards=nfe, grid=grid, chosen=best, chosen_validation=grid[best],
                                      self_correction=test, remasked_per_answer=remasked)  # fmt: skip
    return out


def decode(model, prompts, canvas: int, rule: str, steps: int, tau: float, budget: int):
    """(answers, forwards, mean tokens re-masked per answer), one block, greedy."""
    out = model.generate(prompts, max_new_tokens=canvas, steps=steps, block_length=canvas, remasking=rule,
                         remask_budget=budget, remask_threshold=tau, return_dict_in_generate=True)  # fmt: skip
    remasked = float(out.remasked.float().mean()) if out.remasked is not None else 0.0
    return out.sequences[:, prompts.shape[1] :], out.nfe, remasked


def demo_task(n_questions: int, settings: list[tuple[str, int]]) -> tuple[dict, int]:
    from llada_hf.demo import PHRASINGS, arithmetic_answer, load_demo_model, split_pairs

    model, tokenizer = load_demo_model()
    _, held_out = split_pairs()
    rng = random.Random(0)
    pairs = held_out[: 2 * n_questions]
    rng.shuffle(pairs)
    splits = {"validation": pairs[:n_questions], "test": pairs[n_questions:]}
    data = {}
    for name, split in splits.items():
        questions = [(rng.choice(PHRASINGS).format(a=a, b=b), arithmetic_answer(a, b)) for a, b in split]
        by_length: dict[int, list] = {}
        for question, expected in questions:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)  # fmt: skip
            by_length.setdefault(len(ids), []).append((ids, expected))
        data[name] = [(torch.tensor([ids for ids, _ in group]), [e for _, e in group]) for group in by_length.values()]
    canvas = model.generation_config.max_new_tokens

    def evaluate(split, rule, steps, tau=0.0, budget=0):
        correct = total = nfe = 0
        remasked = 0.0
        for prompts, expected in data[split]:
            answers, nfe, per_answer = decode(model, prompts, canvas, rule, steps, tau, budget)
            decoded = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
            correct += sum(d == e for d, e in zip(decoded, expected))
            remasked += per_answer * len(expected)
            total += len(expected)
        return correct / total, nfe, remasked / total

    return run_grid(evaluate, settings), canvas


def clock_task(seed: int, args, settings: list[tuple[str, int]]) -> tuple[dict, dict]:
    task = ClockWalk(args.positions)
    model = build_model(Backbone(**args.backbone), task.vocab_size, task.prompt_length + task.answer_length, seed)
    record = train(model, "mdm", task.batches(args.batch_size, seed), args.steps, args.lr, seed,
                   warmup=min(100, args.steps // 10))  # fmt: skip
    path = slice(0, task.path_length)
    splits = {
        "validation": task.sample(args.test_size, torch.Generator().manual_seed(20_000)),
        "test": task.sample(args.test_size, torch.Generator().manual_seed(10_000)),
    }

    def evaluate(split, rule, steps, tau=0.0, budget=0):
        prompts, answers = splits[split]
        outputs, nfe, remasked = decode(model, prompts, task.answer_length, rule, steps, tau, budget)
        return float((outputs[:, path] == answers[:, path]).all(-1).float().mean()), nfe, remasked

    result = run_grid(evaluate, settings)
    print(f"  clock seed {seed}: loss {record['final_loss']:.3f}; "
          + ", ".join(f"{key}: {100 * r['plain']:.0f}% -> {100 * r['self_correction']:.0f}% ({r['chosen']})"
                      for key, r in result.items()), flush=True)  # fmt: skip
    return result, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--demo-questions", type=int, default=150, help="per split (validation and test)")
    parser.add_argument("--positions", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-size", type=int, default=200)
    args = parser.parse_args(argv)
    args.backbone = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=192)
    if args.quick:
        args.demo_questions, args.steps, args.seeds, args.test_size = 10, 30, min(args.seeds, 1), 20
    setup(args.threads)
    start = time.time()
    command = "python experiments/self_correction.py " + " ".join(argv if argv is not None else sys.argv[1:])

    demo_settings = [("low_confidence", 4), ("low_confidence", 2), ("random", 16), ("random", 8)]
    demo, demo_canvas = demo_task(args.demo_questions, demo_settings)
    clock_canvas = args.positions + 1
    clock_settings = [("low_confidence", clock_canvas // 2), ("low_confidence", clock_canvas // 3),
                      ("random", clock_canvas), ("random", clock_canvas // 2)]  # fmt: skip
    per_seed, records = [], []
    for seed in range(args.seeds):
        result, record = clock_task(seed, args, clock_settings)
        per_seed.append(result)
        records.append(record)
    wall = round(time.time() - start, 1)

    def pct(value):
        return f"{100 * value:.1f}"

    rows = []
    for r in demo.values():
        rows.append([f"demo addition ({demo_canvas}-token canvas)", r["rule"], f"{demo_canvas / r['forwards']:.0f}",
                     r["forwards"], pct(r["plain"]), pct(r["self_correction"]), r["chosen"],
                     f"{r['remasked_per_answer']:.2f}"])  # fmt: skip
    for rule, steps in clock_settings:
        key = f"{rule}/{steps}"
        plain = mean_std([100 * s[key]["plain"] for s in per_seed])
        corrected = mean_std([100 * s[key]["self_correction"] for s in per_seed])
        chosen = ", ".join(s[key]["chosen"] for s in per_seed)
        remasked = mean_std([s[key]["remasked_per_answer"] for s in per_seed])
        rows.append([f"clock walk ({clock_canvas}-token canvas)", rule, f"{clock_canvas / steps:.0f}", steps,
                     f"{plain['mean']:.1f} ± {plain['std']:.1f}", f"{corrected['mean']:.1f} ± {corrected['std']:.1f}",
                     chosen, f"{remasked['mean']:.2f}"])  # fmt: skip
    markdown = (
        f"# Self-correction (ReMDM-conf re-masking) at equal forwards\n\n`{command}` ({wall:.0f} s, {args.threads} "
        f"thread(s))\n\nTest accuracy (%) without and with re-masking; (tau/budget) chosen on a validation split "
        f"(demo: {args.demo_questions} held-out questions per split, one model; clock walk: {args.test_size} walks "
        f"per split, mean ± sample std over {args.seeds} seeds, {args.steps} training steps each).\n\n"
        + markdown_table(
            [
                "task",
                "commit order",
                "tokens/forward",
                "forwards",
                "plain",
                "self-correction",
                "chosen tau/b",
                "re-masked per answer",
            ],
            rows,
        )  # fmt: skip
    )
    data = {
        "command": command, "wall_s": wall, "config": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "demo": demo, "clock_per_seed": per_seed, "clock_training": records,
    }  # fmt: skip
    write_results("self_correction", markdown, data, None, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
