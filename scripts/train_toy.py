"""Toy task for the training stack: a tiny LLaDA learns digit-string tasks, then a LoRA adapter learns a new one.

Stage 1 (full weights, pre-training loss): sequences `BOS d1..dn = d1..dn EOS` (copy). A random model's LM head is
too small-scaled for LoRA alone to reach confident predictions, so the base first learns digits and copying, like a
real pretrained base would know its vocabulary. Stage 2 (LoRA, SFT loss): prompt `BOS d1..dn =`, answer either each
digit + 1 mod 10 (`shift`) or the digits reversed (`reverse`), evaluated on held-out strings with `generate()`.

    python scripts/train_toy.py --task shift --steps 300
    python scripts/train_toy.py --task reverse --steps 600

Prints one JSON line: eval loss before/after LoRA, held-out exact-match accuracy, wall times, parameter counts.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainingArguments

from llada_hf import LLaDAConfig, LLaDAModelLM
from llada_hf.training import TINY_CONFIGS, DiffusionCollator, DiffusionTrainer, get_lora_model

BOS, EOS, MASK, EQUALS, ZERO = 1002, 1001, 1000, 61, 48  # tiny-tokenizer ids ("=" and "0" are bytes 61 and 48)


def digit_strings(n_digits: int = 3, held_out: int = 100, seed: int = 0) -> tuple[list[tuple], list[tuple]]:
    """All distinct random digit strings of a seeded draw, split into train and held-out."""
    rng = random.Random(seed)
    strings = list(dict.fromkeys(tuple(rng.randrange(10) for _ in range(n_digits)) for _ in range(3000)))
    return strings[:-held_out], strings[-held_out:]


def answer_digits(task: str, digits: tuple) -> tuple:
    if task == "shift":
        return tuple((d + 1) % 10 for d in digits)
    if task == "reverse":
        return digits[::-1]
    if task == "copy":
        return digits
    raise ValueError(task)


def sft_row(task: str, digits: tuple) -> dict:
    """{"prompt_ids", "answer_ids"}: the collator appends EOS and pads with EOS."""
    return {
        "prompt_ids": [BOS, *(ZERO + d for d in digits), EQUALS],
        "answer_ids": [ZERO + d for d in answer_digits(task, digits)],
    }


def copy_text_row(digits: tuple) -> dict:
    return {"input_ids": [BOS, *(ZERO + d for d in digits), EQUALS, *(ZERO + d for d in digits), EOS]}


def training_args(output_dir: str, steps: int, lr: float, batch_size: int = 32, **kwargs) -> TrainingArguments:
    params = dict(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        warmup_steps=10, weight_decay=0.0, logging_steps=50, save_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True,
    )  # fmt: skip
    params.update(kwargs)
    return TrainingArguments(**params)


def pretrain_copy(model: LLaDAModelLM, train: list[tuple], steps: int, output_dir: str, lr: float = 3e-3, seed=0):
    """Stage 1: full-weight masked-diffusion pre-training on copy sequences."""
    collator = DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS, mode="pretrain")
    trainer = DiffusionTrainer(
        model=model,
        args=training_args(output_dir, steps, lr, seed=seed),
        train_dataset=Dataset.from_list([copy_text_row(x) for x in train]),
        data_collator=collator,
    )
    trainer.train()
    return trainer


def lora_finetune(model: LLaDAModelLM, task: str, train, held, steps: int, output_dir: str, lr=3e-3, r=16, seed=0):
    """Stage 2: LoRA SFT; returns (peft model, eval loss before, eval loss after)."""
    n_digits = len(train[0])
    peft_model = get_lora_model(model, r=r, lora_alpha=2 * r)
    collator = DiffusionCollator(
        mask_token_id=MASK, pad_token_id=EOS, mode="sft", max_length=2 * n_digits + 4, pad_to_max_length=True
    )
    trainer = DiffusionTrainer(
        model=peft_model,
        args=training_args(output_dir, steps, lr, per_device_eval_batch_size=len(held), seed=seed),
        train_dataset=Dataset.from_list([sft_row(task, x) for x in train]),
        eval_dataset=Dataset.from_list([sft_row(task, x) for x in held]),
        data_collator=collator,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    return peft_model, before, after


@torch.no_grad()
def accuracy(model, task: str, held: list[tuple]) -> float:
    """Exact match of greedy `generate()` (one token per step) against the answer + EOS padding on held-out prompts.

    The canvas has the training answer length (digits + 2 EOS): a bidirectional model sees the canvas length, so a
    canvas of another length than it was trained on is out of distribution.
    """
    model.eval()
    prompts = torch.tensor([sft_row(task, x)["prompt_ids"] for x in held])
    expected = torch.tensor([sft_row(task, x)["answer_ids"] + [EOS, EOS] for x in held])
    new = expected.shape[1]
    output = model.generate(input_ids=prompts, max_new_tokens=new, steps=new)
    return (output[:, prompts.shape[1] :] == expected).all(-1).float().mean().item()


def run(
    task: str = "shift",
    steps: int = 300,
    lr: float = 3e-3,
    r: int = 16,
    n_digits: int = 3,
    seed: int = 0,
    pretrain_steps: int | None = None,
) -> dict:
    """Stage 1 (`pretrain_steps`, default `steps`; 0 skips it) then LoRA for `steps`; returns the measurements."""
    pretrain_steps = steps if pretrain_steps is None else pretrain_steps
    torch.manual_seed(seed)
    model = LLaDAModelLM(LLaDAConfig(**TINY_CONFIGS["tiny"]))
    train, held = digit_strings(n_digits)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if pretrain_steps:
            pretrain_copy(model, train, pretrain_steps, tmp, seed=seed)
        stage1 = time.perf_counter() - start
        start = time.perf_counter()
        peft_model, before, after = lora_finetune(model, task, train, held, steps, tmp, lr, r, seed)
        stage2 = time.perf_counter() - start
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    return {
        "task": task, "seed": seed, "pretrain_steps": pretrain_steps, "steps": steps, "lr": lr, "lora_r": r,
        "eval_loss_before": round(before, 4), "eval_loss_after": round(after, 4),
        "held_out_accuracy": accuracy(peft_model, task, held), "stage1_s": round(stage1, 1),
        "stage2_s": round(stage2, 1), "trainable_params": trainable, "params": total,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shift", choices=["shift", "reverse", "copy"])
    parser.add_argument("--steps", type=int, default=300, help="steps of each stage")
    parser.add_argument("--lr", type=float, default=3e-3, help="LoRA learning rate")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=None, help="stage-1 steps (default: --steps; 0 skips)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.task, args.steps, args.lr, args.rank, seed=args.seed, pretrain_steps=args.pretrain_steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
