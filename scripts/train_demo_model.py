"""Rebuild the embedded demo model (`llada_hf/assets/demo`): a small LLaDA that adds two numbers, in chat format.

Data come from `llada_hf.demo.arithmetic_rows` ("What is 12 + 7?" -> "12 + 7 = 19.", a, b in 0..99, four phrasings,
300 operand pairs held out); training is the package's masked-diffusion SFT (`DiffusionCollator(mode="sft")` +
`DiffusionTrainer`: the prompt is never masked, the answer is padded with EOS). The script evaluates exact-match
accuracy on the held-out pairs with `generate()` and writes the model, tokenizer, generation config and a
`training.json` record (recipe, accuracy, wall time).

    python scripts/train_demo_model.py                    # ~25 min on one busy CPU core; writes llada_hf/assets/demo
    python scripts/train_demo_model.py --steps 300 --output /tmp/demo   # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments

from llada_hf import LLaDAConfig, LLaDAGenerationConfig, LLaDAModelLM
from llada_hf.demo import (
    DEMO_DIR,
    DEMO_GENERATION,
    DEMO_MODEL_CONFIG,
    PHRASINGS,
    answer_questions,
    arithmetic_answer,
    arithmetic_rows,
    build_demo_tokenizer,
    split_pairs,
)
from llada_hf.training import DiffusionCollator, DiffusionTrainer


def held_out_accuracy(model, tokenizer, pairs, seed: int = 0, batch_size: int = 100) -> float:
    """Exact-match accuracy on held-out pairs, each asked in one (seeded) random phrasing."""
    rng = random.Random(seed)
    questions = [(rng.choice(PHRASINGS).format(a=a, b=b), arithmetic_answer(a, b)) for a, b in pairs]
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        answers = answer_questions(model, tokenizer, [q for q, _ in chunk])
        correct += sum(answer == expected for answer, (_, expected) in zip(answers, chunk))
    model.train(was_training)
    return correct / len(questions)


class HeldOutEval(TrainerCallback):
    """Logs held-out accuracy on a few pairs every `every` steps."""

    def __init__(self, tokenizer, pairs, every: int) -> None:
        self.tokenizer, self.pairs, self.every, self.history = tokenizer, pairs, every, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            accuracy = held_out_accuracy(model, self.tokenizer, self.pairs)
            self.history.append({"step": state.global_step, "held_out_accuracy": accuracy})
            print(json.dumps(self.history[-1]), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(DEMO_DIR))
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    tokenizer = build_demo_tokenizer()
    train_pairs, held_out = split_pairs()
    rows = arithmetic_rows(train_pairs)
    torch.manual_seed(args.seed)
    config = LLaDAConfig(**DEMO_MODEL_CONFIG)
    model = LLaDAModelLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params} parameters, {len(rows)} training rows, {len(held_out)} held-out pairs", flush=True)

    collator = DiffusionCollator(
        mask_token_id=config.mask_token_id, pad_token_id=config.pad_token_id, mode="sft", tokenizer=tokenizer,
        seed=args.seed,
    )  # fmt: skip
    evaluator = HeldOutEval(tokenizer, held_out[:100], args.eval_every)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=200, weight_decay=0.01,
            adam_beta2=0.98, logging_steps=100, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
            seed=args.seed, data_seed=args.seed,
        )  # fmt: skip
        trainer = DiffusionTrainer(
            model=model,
            args=training_args,
            train_dataset=Dataset.from_list(rows),
            data_collator=collator,
            callbacks=[evaluator],
        )
        result = trainer.train()
    train_time = time.time() - start
    model.eval()
    accuracy = held_out_accuracy(model, tokenizer, held_out)

    output = Path(args.output)
    model.generation_config = LLaDAGenerationConfig(
        mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id, eot_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
        **DEMO_GENERATION,
    )  # fmt: skip
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    record = {
        "command": " ".join(["python scripts/train_demo_model.py", *(sys.argv[1:] if argv is None else argv)]),
        "parameters": n_params,
        "training_rows": len(rows),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "seed": args.seed,
        "final_train_loss": result.training_loss,
        "held_out_exact_match": accuracy,
        "held_out_pairs": len(held_out),
        "eval_history": evaluator.history,
        "train_wall_time_s": round(train_time, 1),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    (output / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "eval_history"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
