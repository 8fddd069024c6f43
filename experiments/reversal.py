"""Reversal curse: facts learnt as "<name> is the <description>", queried as "the <description> is <name>".

Synthetic facts about fictitious entities, every field separated by an explicit delimiter `|`:

    forward:  <name> | <relation> | <adjective> <noun>        e.g. "Zorvin | known as | silver architect"
    reverse:  <adjective> <noun> | <relation> | <name>        e.g. "silver architect | was played by | Zorvin"

Two groups of entities (the Berglund et al. 2023 design). "Both" entities are seen in both orders (four forward and
four reverse relations), so both models learn what the reverse relations mean. "Test" entities are seen only name
first, with three of the four forward relations. Test queries, on the test entities, are all held-out phrasings:

* forward: the fourth forward relation (never seen with these entities), answer the description;
* reverse: the four reverse relations (never seen with these entities), answer the name.

Both models share backbone, data, batches, steps and training loop: the masked-diffusion model is trained with the
package's pre-training loss and answers with `generate()`; the autoregressive twin uses a causal mask, next-token loss
and greedy decoding. The learning rate is picked per model from a small sweep (seed 0) on the forward held-out
accuracy, never on the reverse one. Extra MDM column: the name infilled in a trained forward sentence.

    python experiments/reversal.py --seeds 3          # ~25 min on one busy CPU core (10 training runs)
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
    BOS,
    EOS,
    FIRST_FREE_ID,
    MASK,
    Backbone,
    build_model,
    common_arguments,
    decode,
    fmt_pct,
    markdown_table,
    mdm_infill,
    mean_std,
    new_figure,
    setup,
    train,
    write_results,
)

ADJECTIVES = ["silver", "quiet", "northern", "crimson", "ancient", "hollow", "golden", "restless", "pale", "iron",
              "velvet", "distant"]  # fmt: skip
NOUNS = ["architect", "cartographer", "violinist", "gardener", "astronomer", "sculptor", "navigator", "weaver",
         "alchemist", "chronicler", "beekeeper", "ferryman"]  # fmt: skip
FORWARD_RELATIONS = [("is", "the"), ("known", "as"), ("works", "as"), ("remembered", "as")]
REVERSE_RELATIONS = [("is", "called"), ("was", "played", "by"), ("is", "the", "title", "of"), ("belongs", "to")]
HELD_OUT_FORWARD = 3  # index of the forward relation never used with test entities


class Vocab:
    """Token ids for the task: delimiter, relation words, adjectives, nouns, names."""

    def __init__(self, n_entities: int) -> None:
        words = ["|"] + sorted({w for rel in FORWARD_RELATIONS + REVERSE_RELATIONS for w in rel})
        words += ADJECTIVES + NOUNS + [f"name{i}" for i in range(n_entities)]
        self.words = words
        self.ids = {w: FIRST_FREE_ID + i for i, w in enumerate(words)}
        self.size = FIRST_FREE_ID + len(words)

    def encode(self, words) -> list[int]:
        return [self.ids[w] for w in words]

    def decode(self, ids) -> str:
        names = {i: w for w, i in self.ids.items()} | {EOS: "<eos>", MASK: "<mask>", BOS: "<bos>"}
        return " ".join(names.get(int(i), "?") for i in ids)


def make_entities(n_test: int, n_both: int, seed: int) -> tuple[list[tuple[str, tuple[str, str]]], ...]:
    """Two disjoint groups (test, both) of (name, (adjective, noun)), every description distinct."""
    rng = random.Random(seed)
    descriptions = [(a, n) for a in ADJECTIVES for n in NOUNS]
    rng.shuffle(descriptions)
    if n_test + n_both > len(descriptions):
        raise ValueError(f"at most {len(descriptions)} entities")
    entities = [(f"name{i}", descriptions[i]) for i in range(n_test + n_both)]
    return entities[:n_test], entities[n_test:]


def forward_words(name: str, description: tuple[str, str], relation: int) -> tuple[list[str], list[str]]:
    """(prompt words, answer words) of a name-first fact."""
    return [name, "|", *FORWARD_RELATIONS[relation], "|"], list(description)


def reverse_words(name: str, description: tuple[str, str], relation: int) -> tuple[list[str], list[str]]:
    return [*description, "|", *REVERSE_RELATIONS[relation], "|"], [name]


def training_sentences(vocab: Vocab, test_group, both_group) -> list[list[int]]:
    sentences = []
    for name, description in test_group:
        for relation in range(len(FORWARD_RELATIONS)):
            if relation != HELD_OUT_FORWARD:
                prompt, answer = forward_words(name, description, relation)
                sentences.append([BOS, *vocab.encode(prompt + answer), EOS])
    for name, description in both_group:
        for relation in range(len(FORWARD_RELATIONS)):
            prompt, answer = forward_words(name, description, relation)
            sentences.append([BOS, *vocab.encode(prompt + answer), EOS])
        for relation in range(len(REVERSE_RELATIONS)):
            prompt, answer = reverse_words(name, description, relation)
            sentences.append([BOS, *vocab.encode(prompt + answer), EOS])
    return sentences


def batch_sampler(sentences: list[list[int]], batch_size: int, seed: int):
    """Uniform sampling with replacement; rows EOS-padded to the longest sentence (fixed length)."""
    length = max(len(s) for s in sentences) + 1
    data = torch.full((len(sentences), length), EOS, dtype=torch.long)
    for i, sentence in enumerate(sentences):
        data[i, : len(sentence)] = torch.tensor(sentence)
    generator = torch.Generator().manual_seed(seed)
    no_prompt = torch.zeros(batch_size, dtype=torch.long)

    def next_batch(step: int):
        return data[torch.randint(len(sentences), (batch_size,), generator=generator)], no_prompt

    return next_batch, length


def accuracy(model, kind: str, vocab: Vocab, queries: list[tuple[list[str], list[str]]], length: int) -> float:
    """Exact match of the answer words (EOS after them not required); queries grouped by prompt length.

    The masked model's canvas runs to the training row length `length` (rows were EOS-padded to it in training)."""
    correct = 0
    by_length: dict[int, list] = {}
    for prompt, answer in queries:
        by_length.setdefault(len(prompt), []).append((prompt, answer))
    for group in by_length.values():
        prompts = torch.tensor([[BOS, *vocab.encode(p)] for p, _ in group])
        answer_length = length - prompts.shape[1] if kind == "mdm" else len(group[0][1]) + 1
        outputs = decode(model, kind, prompts, answer_length)
        for output, (_, answer) in zip(outputs.tolist(), group):
            correct += output[: len(answer)] == vocab.encode(answer)
    return correct / len(queries)


def infill_accuracy(model, vocab: Vocab, group, relation: int, length: int) -> float:
    """MDM only: the name masked in a name-first sentence, filled by `generate(infill=True)` (a reverse query)."""
    rows = []
    for name, description in group:
        prompt, answer = forward_words(name, description, relation)
        row = [BOS, MASK, *vocab.encode(prompt[1:] + answer), EOS]
        rows.append(row + [EOS] * (length - len(row)))
    filled = mdm_infill(model, torch.tensor(rows))
    names = torch.tensor([vocab.ids[name] for name, _ in group])
    return float((filled[:, 1] == names).float().mean())


def evaluate(model, kind: str, vocab: Vocab, test_group, both_group, length: int) -> dict[str, float]:
    def forward_queries(group, relations):
        return [forward_words(n, d, r) for n, d in group for r in relations]

    def reverse_queries(group):
        return [reverse_words(n, d, r) for n, d in group for r in range(len(REVERSE_RELATIONS))]

    trained_relations = [r for r in range(len(FORWARD_RELATIONS)) if r != HELD_OUT_FORWARD]
    metrics = {
        "forward_held_out": accuracy(model, kind, vocab, forward_queries(test_group, [HELD_OUT_FORWARD]), length),
        "reverse_held_out": accuracy(model, kind, vocab, reverse_queries(test_group), length),
        "forward_trained": accuracy(model, kind, vocab, forward_queries(test_group, trained_relations), length),
        "reverse_trained_control": accuracy(model, kind, vocab, reverse_queries(both_group), length),
    }
    if kind == "mdm":
        metrics["reverse_infill_held_out"] = infill_accuracy(model, vocab, test_group, HELD_OUT_FORWARD, length)
    return metrics


def run_one(kind: str, seed: int, lr: float, args, vocab, test_group, both_group, sentences) -> dict:
    next_batch, length = batch_sampler(sentences, args.batch_size, seed)
    model = build_model(Backbone(**args.backbone), vocab.size, length + 8, seed)
    record = train(model, kind, next_batch, args.steps, lr, seed, warmup=min(100, args.steps // 10))
    record.update(evaluate(model, kind, vocab, test_group, both_group, length))
    record.update(kind=kind, seed=seed, lr=lr)
    print(f"  {kind} seed {seed} lr {lr:g}: " + ", ".join(f"{k} {v}" for k, v in record.items() if k != "kind"))
    if seed == 0 and args.show_samples:
        name, description = test_group[0]
        prompt, _ = reverse_words(name, description, 0)
        prompt_ids = torch.tensor([[BOS, *vocab.encode(prompt)]])
        canvas = length - prompt_ids.shape[1] if kind == "mdm" else 2
        output = decode(model, kind, prompt_ids, canvas)[:, :2]
        record["sample_reverse"] = f"{' '.join(prompt)} -> {vocab.decode(output[0])} (truth: {name})"
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--test-entities", type=int, default=20, help="entities seen name-first only (queried)")
    parser.add_argument("--both-entities", type=int, default=60, help="entities seen in both orders (control)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="learning-rate sweep (seed 0, both models)")
    args = parser.parse_args(argv)
    args.backbone = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384)
    if args.quick:
        args.test_entities, args.both_entities, args.steps, args.lrs = 6, 10, 60, "3e-3"
        args.seeds = min(args.seeds, 1)
        args.backbone = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    args.show_samples = True
    setup(args.threads)
    start = time.time()
    lrs = [float(x) for x in args.lrs.split(",")]

    vocab = Vocab(args.test_entities + args.both_entities)
    test_group, both_group = make_entities(args.test_entities, args.both_entities, seed=0)
    sentences = training_sentences(vocab, test_group, both_group)
    print(f"{len(sentences)} training sentences, vocabulary {vocab.size}, {args.steps} steps x {args.batch_size}")

    sweep = {"mdm": [], "ar": []}
    for kind in ("mdm", "ar"):
        for lr in lrs:
            sweep[kind].append(run_one(kind, 0, lr, args, vocab, test_group, both_group, sentences))
    best_lr = {kind: max(sweep[kind], key=lambda r: (r["forward_held_out"], -r["final_loss"]))["lr"] for kind in sweep}
    runs = {kind: [r for r in sweep[kind] if r["lr"] == best_lr[kind]] for kind in sweep}
    for kind in ("mdm", "ar"):
        for seed in range(1, args.seeds):
            runs[kind].append(run_one(kind, seed, best_lr[kind], args, vocab, test_group, both_group, sentences))

    metrics = ["forward_held_out", "reverse_held_out", "reverse_infill_held_out", "forward_trained",
               "reverse_trained_control"]  # fmt: skip
    summary = {kind: {m: mean_std([r[m] for r in runs[kind]]) for m in metrics if m in runs[kind][0]} for kind in runs}
    wall = round(time.time() - start, 1)
    command = "python experiments/reversal.py " + " ".join(argv if argv is not None else sys.argv[1:])

    labels = {
        "forward_held_out": "forward: `<name> \\| remembered as \\|` -> description",
        "reverse_held_out": "**reverse**, description first: `<description> \\| <reverse relation> \\|` -> name",
        "reverse_infill_held_out": "**reverse** by infilling: `<mask> \\| remembered as \\| <description>` -> name",
        "forward_trained": "forward, trained relations (memorisation)",
        "reverse_trained_control": "reverse, control entities (trained sentences)",
    }
    rows = [
        [labels[m], fmt_pct(summary["mdm"][m]), fmt_pct(summary["ar"][m]) if m in summary["ar"] else "impossible*"]
        for m in metrics
    ]
    sweep_rows = [
        [kind.upper(), f"{r['lr']:g}", f"{r['final_loss']:.3f}", f"{100 * r['forward_held_out']:.1f}",
         f"{100 * r['reverse_held_out']:.1f}", f"{100 * r['reverse_infill_held_out']:.1f}" if kind == "mdm" else "",
         "**selected**" if r["lr"] == best_lr[kind] else ""]
        for kind in ("mdm", "ar") for r in sweep[kind]
    ]  # fmt: skip
    samples = "; ".join(f"{k.upper()}: `{runs[k][0]['sample_reverse']}`" for k in ("mdm", "ar"))
    n_names = args.test_entities + args.both_entities
    markdown = (
        f"# Reversal curse\n\n`{command}` ({wall:.0f} s, {args.threads} thread(s))\n\n"
        f"{args.test_entities} test entities (seen name-first only) + {args.both_entities} control entities (seen in "
        f"both orders), {len(sentences)} training sentences, backbone {args.backbone}, {args.steps} steps x batch "
        f"{args.batch_size}, pre-training objective (every token a target). Exact-match accuracy (%) on the test "
        f"entities with phrasings never seen with them, mean ± sample std over {args.seeds} seed(s) at each model's "
        f"selected learning rate. Chance for a name: {100 / n_names:.1f} %.\n\n"
        + markdown_table(["query", "masked diffusion", "autoregressive"], rows)
        + "\n\\* a left-to-right model cannot condition on text to the right of the blank.\n"
        + "\nLearning-rate sweep (seed 0; selected by forward held-out accuracy, then training loss; the reverse "
        "queries play no part):\n\n"
        + markdown_table(["model", "lr", "final loss", "forward", "reverse", "reverse infill", ""], sweep_rows)
        + f"\nSamples (seed 0, first test entity, description-first query): {samples}\n"
    )  # fmt: skip
    data = {
        "command": command, "wall_s": wall, "config": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "best_lr": best_lr, "summary": summary, "runs": runs, "sweep": sweep,
    }  # fmt: skip

    fig, axes = new_figure(ncols=2, width=5.2)
    shown = ["forward_held_out", "reverse_held_out", "reverse_infill_held_out", "reverse_trained_control"]
    positions = range(len(shown))
    for offset, kind, color in ((-0.2, "mdm", "tab:blue"), (0.2, "ar", "tab:orange")):
        means = [100 * summary[kind][m]["mean"] if m in summary[kind] else 0 for m in shown]
        errors = [100 * summary[kind][m]["std"] if m in summary[kind] else 0 for m in shown]
        axes[0][0].bar([p + offset for p in positions], means, 0.4, yerr=errors, color=color, label=kind.upper())
    ticks = ["forward", "reverse\n(desc. first)", "reverse\n(infill)", "control\n(trained)"]
    axes[0][0].set_xticks(list(positions), ticks)
    axes[0][0].set_ylabel("exact match (%)")
    axes[0][0].set_ylim(0, 105)
    axes[0][0].legend()
    axes[0][0].set_title(f"Reversal curse ({args.seeds} seeds; AR cannot infill)", fontsize=10)
    for kind, color in (("mdm", "tab:blue"), ("ar", "tab:orange")):
        axes[0][1].plot(lrs, [100 * r["forward_held_out"] for r in sweep[kind]], "o-", color=color,
                        label=f"{kind.upper()} forward")  # fmt: skip
        axes[0][1].plot(lrs, [100 * r["reverse_held_out"] for r in sweep[kind]], "s--", color=color,
                        label=f"{kind.upper()} reverse (desc. first)")  # fmt: skip
    axes[0][1].set_xscale("log")
    axes[0][1].set_xlabel("learning rate (seed 0)")
    axes[0][1].set_ylim(-2, 105)
    axes[0][1].legend(fontsize=8)
    axes[0][1].set_title("Learning-rate sweep", fontsize=10)
    write_results("reversal", markdown, data, fig, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
