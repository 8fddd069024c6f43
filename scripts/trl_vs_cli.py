"""`DiffusionSFTTrainer` (TRL) beside `llada-hf train` on the same data and budget, on the demo model.

Teaches the demo model new phrasings of its addition task (TRL `messages` rows, written to a JSON-lines file that
`llada-hf train` reads and the same rows as a `datasets.Dataset` for TRL), then measures exact-match accuracy on
held-out operand pairs asked in the new phrasings, before and after each run. Same seed, steps, batch, learning rate
and max_length for both. Usage: python scripts/trl_vs_cli.py [--steps 60] [--out /tmp/trl_vs_cli]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from llada_hf.demo import DEMO_DIR, answer_questions, arithmetic_answer, arithmetic_rows, load_demo_model, split_pairs

NEW_PHRASINGS = ("Compute {a} + {b}.", "Tell me the sum of {a} and {b}.")


def accuracy(model, tokenizer, pairs: list[tuple[int, int]], seed: int = 0) -> float:
    """Exact match on `pairs`, each asked in one (seeded) new phrasing."""
    rng = random.Random(seed)
    questions = [(rng.choice(NEW_PHRASINGS).format(a=a, b=b), arithmetic_answer(a, b)) for a, b in pairs]
    model.eval()
    with torch.no_grad():
        answers = answer_questions(model, tokenizer, [q for q, _ in questions])
    return sum(a == e for a, (_, e) in zip(answers, questions)) / len(questions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train_pairs", type=int, default=300)
    parser.add_argument("--eval_pairs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/trl_vs_cli")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_pairs, held_out = split_pairs()
    rows = arithmetic_rows(train_pairs[: args.train_pairs], phrasings=NEW_PHRASINGS)
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    eval_pairs = held_out[: args.eval_pairs]
    common = dict(
        max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr, seed=args.seed,
        max_length=64, save_strategy="no", use_cpu=True, report_to="none", logging_steps=10, disable_tqdm=True,
        bf16=False,  # SFTConfig defaults to bf16 (autocast on CPU too) and checkpointing; TrainingArguments does not
    )  # fmt: skip
    model, tokenizer = load_demo_model()
    results = {"before": accuracy(model, tokenizer, eval_pairs)}

    from llada_hf.training import train_main

    argv_cli = ["--model_name_or_path", str(DEMO_DIR), "--train_file", str(data), "--output_dir", str(out / "cli")]
    for key, value in common.items():
        argv_cli += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    assert train_main(argv_cli) == 0
    model, tokenizer = load_demo_model(out / "cli")
    results["llada-hf train"] = accuracy(model, tokenizer, eval_pairs)

    from datasets import Dataset

    from llada_hf.training import DiffusionSFTConfig, DiffusionSFTTrainer

    model, tokenizer = load_demo_model()
    model.train()
    config = DiffusionSFTConfig(output_dir=str(out / "trl"), gradient_checkpointing=False, **common)
    trainer = DiffusionSFTTrainer(model, config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    results["DiffusionSFTTrainer"] = accuracy(model, tokenizer, eval_pairs)
    print(json.dumps({"args": vars(args), "held_out_accuracy": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
