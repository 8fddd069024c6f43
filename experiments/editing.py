"""LLaDA2.1 token editing on a trained block-causal model: no editing vs the model card's S and Q modes.

LLaDA2.1's sampler commits masked tokens above `threshold` (mask-to-token) and also rewrites already-written tokens
of the current block whose new proposal has probability above `editing_threshold` (token-to-token), then polishes a
finished block for up to `max_post_steps` more forwards. The model card's modes: S (speed: threshold 0.5, editing
0.0) and Q (quality: threshold 0.7, editing 0.5, 16 post steps). Editing is meant to repair the guesses that a low
threshold forces; it costs forwards. Measured against the same sampler without editing (`editing_threshold=1.0`) at
each mode's threshold, and at an aggressive draft threshold (0.1: most of a block in one forward).

Model: a small LLaDA2.0-architecture MoE (`LLaDA2MoeModelLM`: fused q/k/v with qk-norm, partial RoPE, one dense
layer then sigmoid-routed experts) trained from scratch with LLaDA2's objective, block diffusion
(`sft_loss(block_length=)`: each noisy block predicted from itself and the clean earlier blocks), on the clock walk
of `planning.py` (5 positions: an 8-token prompt, a 6-token answer = 2 blocks of 4). Two training variants: masks
only (LLaDA2.0's objective), and masks plus token-to-token noise (`block_loss(edit_noise=)`: a model must have
learnt what to predict at a *written* token before its editing proposals mean anything, as LLaDA2.1 is trained to).
The learning rate of each variant is picked on a validation split (seed 0, the LLaDA2.0 sampler); test accuracy =
the whole path exact, on other walks.

    python experiments/editing.py --seeds 3 --jobs 2    # trains both variants, saves to --checkpoints, evaluates
    python experiments/editing.py --seeds 3 --jobs 2 --phase train   # only train
    python experiments/editing.py --seeds 3 --jobs 2 --phase eval    # only evaluate the saved checkpoints
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    EOS,
    MASK,
    PAD,
    common_arguments,
    markdown_table,
    mean_std,
    run_parallel,
    setup,
    train,
    write_results,
)
from llada_hf.generation.generation_llada2 import block_causal_mask  # noqa: E402
from llada_hf.modeling import LLaDA2MoeConfig, LLaDA2MoeModelLM  # noqa: E402
from planning import FIRST_NODE, ClockWalk  # noqa: E402

from llada_hf.training import IGNORE_INDEX, block_diffusion_logits, diffusion_loss, forward_process, sft_loss  # noqa: E402

# (name, threshold, editing_threshold, max_post_steps or None for the sampler's default): the model card's modes, the
# same thresholds unedited, and an aggressive draft (threshold 0.1: most of a block at once) with and without editing.
MODES = [
    ("no editing, threshold 0.5", 0.5, 1.0, None),
    ("S mode (threshold 0.5, editing 0.0)", 0.5, 0.0, None),
    ("no editing, threshold 0.7", 0.7, 1.0, 16),
    ("Q mode (threshold 0.7, editing 0.5, 16 post steps)", 0.7, 0.5, 16),
    ("no editing, threshold 0.1 (draft)", 0.1, 1.0, None),
    ("draft + editing 0.0 (threshold 0.1)", 0.1, 0.0, None),
]
BACKBONE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=128, num_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                moe_intermediate_size=64, num_shared_experts=1, first_k_dense_replace=1, rotary_dim=8,
                rope_theta=10000.0)  # fmt: skip


def build_llada2(task: ClockWalk, seed: int) -> LLaDA2MoeModelLM:
    torch.manual_seed(seed)
    config = LLaDA2MoeConfig(vocab_size=task.vocab_size, max_position_embeddings=64, mask_token_id=MASK,
                             eos_token_id=EOS, pad_token_id=PAD, **BACKBONE)  # fmt: skip
    model = LLaDA2MoeModelLM(config)
    model.generation_config.update(mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
    return model


def block_loss(block_length: int, edit_noise: float, model, input_ids, prompt_lengths, generator) -> torch.Tensor:
    """Block diffusion (`sft_loss(block_length=)`); with `edit_noise` > 0 also token-to-token noise, as LLaDA2.1 trains
    its editing: each answer token left unmasked is replaced by a random node with probability `edit_noise`, and every
    unmasked answer token becomes a target too (weight 1: restore the replaced ones, keep the others), so the model's
    prediction at a written token says whether to keep it. A model trained on masked positions only has no reason to
    predict a written token as itself (see the results)."""
    if not edit_noise:
        return sft_loss(model, input_ids, prompt_lengths, generator=generator, block_length=block_length)
    noisy, labels, p_mask = forward_process(input_ids, MASK, generator=generator, prompt_lengths=prompt_lengths)
    b, length = input_ids.shape
    written = (torch.arange(length)[None, :] >= prompt_lengths[:, None]) & (labels == IGNORE_INDEX)
    replaced = written & (torch.rand(b, length, generator=generator) < edit_noise)
    vocab = model.config.vocab_size
    noisy = torch.where(replaced, torch.randint(FIRST_NODE, vocab, (b, length), generator=generator), noisy)
    labels = torch.where(written, input_ids, labels)
    p_mask = torch.where(written, torch.ones_like(p_mask), p_mask)
    logits = block_diffusion_logits(model, noisy, input_ids, block_length)
    return diffusion_loss(logits, labels, p_mask, (length - prompt_lengths).float())


@torch.no_grad()
def accuracy(model, task: ClockWalk, split, block_length: int, **sampler) -> tuple[float, float]:
    """(whole-path accuracy, forwards per answer): greedy, one answer at a time (the LLaDA2.1 sampler's official
    batch is 1; forwards are then per answer)."""
    prompts, answers = split
    correct, forwards = 0, 0
    for prompt, answer in zip(prompts, answers):
        out = model.generate(prompt[None], max_new_tokens=task.answer_length, block_length=block_length,
                             return_dict_in_generate=True, **sampler)  # fmt: skip
        path = out.sequences[0, prompt.shape[0] : prompt.shape[0] + task.path_length]
        correct += int(torch.equal(path, answer[: task.path_length]))
        forwards += int(out.nfe)
    return correct / len(prompts), forwards / len(prompts)


@torch.no_grad()
def written_tokens(model, task: ClockWalk, split, block_length: int) -> dict:
    """What editing sees at a correct written token: one forward over [prompt | correct answer] (block-causal, canvas
    rounded up to whole blocks); per answer position, how often the prediction is the written token itself and how
    often another token has probability > 0.5 (an edit at editing_threshold 0.5 would rewrite it)."""
    prompts, answers = split
    ids = torch.cat([prompts, answers], dim=1)
    length = -(-ids.shape[1] // block_length) * block_length
    ids = torch.cat([ids, torch.full((ids.shape[0], length - ids.shape[1]), PAD)], dim=1)
    mask = block_causal_mask(length, block_length)[None, None]
    probs = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)
    start, end = prompts.shape[1], prompts.shape[1] + answers.shape[1]
    confidence, best = probs[:, start:end].max(-1)
    kept = best == answers
    return {
        "kept": [round(v, 3) for v in kept.float().mean(0).tolist()],
        "rewritten_at_0.5": [round(v, 3) for v in (~kept & (confidence > 0.5)).float().mean(0).tolist()],
    }


def splits(task: ClockWalk, size: int) -> dict:
    return {
        "validation": task.sample(size, torch.Generator().manual_seed(20_000)),
        "test": task.sample(size, torch.Generator().manual_seed(10_000)),
    }


def train_one(seed: int, lr: float, edit_noise: float, args) -> dict:
    """Train one model, save it to `<checkpoints>/noise<edit_noise>/seed<seed>_lr<lr>`, and return its training
    record plus the validation accuracy under the default (LLaDA2.0) sampler."""
    setup(args.threads)
    task = ClockWalk(args.positions)
    model = build_llada2(task, seed)
    loss_fn = partial(block_loss, args.block_length, edit_noise)
    record = train(model, "mdm", task.batches(args.batch_size, seed), args.steps, lr, seed,
                   warmup=min(100, args.steps // 10), loss_fn=loss_fn)  # fmt: skip
    validation, _ = accuracy(
        model,
        task,
        splits(task, args.test_size)["validation"],
        args.block_length,
        steps=args.block_length,
        threshold=0.95,
    )  # fmt: skip  (the LLaDA2.0 sampler's default)
    path = Path(args.checkpoints) / f"noise{edit_noise:g}" / f"seed{seed}_lr{lr:g}"
    model.save_pretrained(path)
    record.update(seed=seed, lr=lr, edit_noise=edit_noise, validation=validation, checkpoint=str(path))
    (path / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"  noise {edit_noise:g} seed {seed} lr {lr:g}: loss {record['final_loss']:.3f}, validation "
          f"{100 * validation:.1f}% ({record['train_s']:.0f} s)", flush=True)  # fmt: skip
    return record


def train_variant(edit_noise: float, lrs: list[float], args) -> dict:
    """Seed 0 at each learning rate, the best on validation (then the lower loss) for the other seeds."""
    sweep = run_parallel(train_one, [(0, lr, edit_noise, args) for lr in lrs], args.jobs)
    best = max(sweep, key=lambda r: (r["validation"], -r["final_loss"]))
    calls = [(seed, best["lr"], edit_noise, args) for seed in range(1, args.seeds)]
    chosen = {"lr": best["lr"], "sweep": sweep, "runs": [best, *run_parallel(train_one, calls, args.jobs)]}
    folder = Path(args.checkpoints) / f"noise{edit_noise:g}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n")
    return chosen


def evaluate_one(checkpoint: str, args) -> dict:
    """Test accuracy and forwards per answer of each mode (LLaDA2.1 sampler)."""
    setup(args.threads)
    task = ClockWalk(args.positions)
    model = LLaDA2MoeModelLM.from_pretrained(checkpoint).eval()
    test = splits(task, args.test_size)["test"]
    out = {}
    for name, threshold, editing, post in MODES:
        sampler = dict(sampler="llada2.1", threshold=threshold, editing_threshold=editing)
        if post is not None:
            sampler["max_post_steps"] = post
        acc, nfe = accuracy(model, task, test, args.block_length, **sampler)
        out[name] = {"accuracy": acc, "forwards": nfe}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--phase", choices=["all", "train", "eval", "diagnose"], default="all")
    parser.add_argument("--jobs", type=int, default=1, help="training/evaluation processes (one thread each)")
    parser.add_argument("--checkpoints", default="/tmp/editing_checkpoints", help="where trained models go")
    parser.add_argument("--positions", type=int, default=5)
    parser.add_argument("--block-length", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lrs", default="5e-4,1e-3", help="learning rates tried on seed 0 (validation accuracy)")
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument(
        "--edit-noise", default="0,0.1", help="training variants: token-to-token noise each (0: masks; block_loss)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.test_size, args.lrs = 10, min(args.seeds, 1), 4, args.lrs.split(",")[0]
    setup(args.threads)
    start = time.time()
    command = "python experiments/editing.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lrs = [float(lr) for lr in args.lrs.split(",")]
    noises = [float(noise) for noise in args.edit_noise.split(",")]

    if args.phase in ("all", "train"):
        for noise in noises:
            train_variant(noise, lrs, args)
        if args.phase == "train":
            return 0
    if args.phase == "diagnose":  # seed 0 of each variant: `written_tokens` on the test walks
        task = ClockWalk(args.positions)
        for noise in noises:
            run = json.loads((Path(args.checkpoints) / f"noise{noise:g}" / "chosen.json").read_text())["runs"][0]
            model = LLaDA2MoeModelLM.from_pretrained(run["checkpoint"]).eval()
            found = written_tokens(model, task, splits(task, args.test_size)["test"], args.block_length)
            print(f"edit noise {noise:g}, seed 0: {json.dumps(found)}")
        return 0
    chosen, per_seed = {}, {}
    for noise in noises:
        chosen[noise] = json.loads((Path(args.checkpoints) / f"noise{noise:g}" / "chosen.json").read_text())
        runs = chosen[noise]["runs"][: args.seeds]
        per_seed[noise] = run_parallel(evaluate_one, [(run["checkpoint"], args) for run in runs], args.jobs)
    wall = round(time.time() - start, 1)

    header, rows, summary = ["sampler (LLaDA2.1)"], [], {}
    for noise in noises:
        label = "masks only" if noise == 0 else f"+ editing noise {noise:g}"
        header += [f"{label}: accuracy (%)", f"{label}: per seed", f"{label}: forwards"]
    for name, *_ in MODES:
        row = [name]
        for noise in noises:
            acc = mean_std([100 * s[name]["accuracy"] for s in per_seed[noise]])
            nfe = mean_std([s[name]["forwards"] for s in per_seed[noise]])
            summary.setdefault(f"noise{noise:g}", {})[name] = {"accuracy": acc, "forwards": nfe}
            seeds = " / ".join(f"{100 * s[name]['accuracy']:.0f}" for s in per_seed[noise])
            row += [f"{acc['mean']:.1f} ± {acc['std']:.1f}", seeds, f"{nfe['mean']:.2f} ± {nfe['std']:.2f}"]
        rows.append(row)
    training = "; ".join(
        f"{'masks only' if noise == 0 else f'editing noise {noise:g}'}: lr {chosen[noise]['lr']:g} ("
        + ", ".join(f"{r['lr']:g}: {100 * r['validation']:.1f} %" for r in chosen[noise]["sweep"])
        + "), validation per seed "
        + " / ".join(f"{100 * r['validation']:.0f}" for r in chosen[noise]["runs"][: args.seeds])
        + " %"
        for noise in noises
    )
    markdown = (
        f"# LLaDA2.1 token editing on a block-causal model (clock walk)\n\n`{command}` ({wall:.0f} s, "
        f"{args.threads} thread(s) per process)\n\nLLaDA2.0-architecture MoE ({BACKBONE['hidden_size']} wide, "
        f"{BACKBONE['num_hidden_layers']} layers, {BACKBONE['num_experts']} experts, top-"
        f"{BACKBONE['num_experts_per_tok']}) trained from scratch with block diffusion (blocks of "
        f"{args.block_length}), "
        f"{args.steps} steps x batch {args.batch_size}; with masks only, or also with token-to-token noise (a share "
        f"of the unmasked answer tokens replaced by random ones, every unmasked answer token a target: how LLaDA2.1 "
        f"learns to edit). Learning rate per variant picked on validation (seed 0, LLaDA2.0 sampler at threshold "
        f"0.95): {training}. Test: {args.test_size} walks, whole path exact, greedy, one answer per call; forwards "
        f"per answer (a 6-token answer, 2 blocks). Mean ± sample std over {args.seeds} seeds (per-seed accuracies "
        f"given: a seed that never learns the start scores 0 everywhere).\n\n" + markdown_table(header, rows)
    )
    data = {
        "command": command, "wall_s": wall, "config": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "backbone": BACKBONE, "modes": MODES, "training": {f"noise{k:g}": v for k, v in chosen.items()},
        "per_seed": {f"noise{k:g}": v for k, v in per_seed.items()}, "summary": summary,
    }  # fmt: skip
    write_results("editing", markdown, data, None, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
