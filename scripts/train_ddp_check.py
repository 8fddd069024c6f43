"""Train a tiny LLaDA for a few steps, alone or under `torchrun` (CPU DDP, gloo); save the final weights.

    torchrun --nproc_per_node 2 scripts/train_ddp_check.py --out ddp.pt --per-device-batch 2
    python scripts/train_ddp_check.py --out single.pt --per-device-batch 4

Both runs see the same global batches and the same noise (`DiffusionTrainer` seeds each row's noise by its dataset
index and the epoch), so their weights agree up to float reduction order. tests/test_training.py imports `train`
from here.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from datasets import Dataset
from transformers import TrainingArguments

from llada_hf import LLaDAConfig, LLaDAModelLM
from llada_hf.training import TINY_CONFIGS, DiffusionCollator, DiffusionTrainer


def toy_rows(count: int = 32, seed: int = 0) -> list[dict]:
    """Prompt/answer pairs of random ids (ragged; the collator pads to a fixed length)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        prompt_len, answer_len = (int(v) for v in torch.randint(2, 6, (2,), generator=generator))
        ids = torch.randint(0, 256, (prompt_len + answer_len,), generator=generator).tolist()
        rows.append({"prompt_ids": ids[:prompt_len], "answer_ids": ids[prompt_len:]})
    return rows


def train(per_device_batch: int, steps: int = 3, grad_accum: int = 1, mode: str = "sft", **kwargs) -> dict:
    """A few seeded steps from the same initial weights; returns the final state dict (on every rank)."""
    torch.manual_seed(0)
    model = LLaDAModelLM(LLaDAConfig(**TINY_CONFIGS["tiny"]))
    collator = DiffusionCollator(
        mask_token_id=1000, pad_token_id=1001, mode=mode, max_length=12, pad_to_max_length=True
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs.setdefault("ddp_backend", "gloo")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=per_device_batch,
            gradient_accumulation_steps=grad_accum, learning_rate=1e-3, warmup_steps=0, save_strategy="no",
            report_to=[], disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1, **kwargs,
        )  # fmt: skip
        trainer = DiffusionTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(toy_rows()), data_collator=collator
        )
        trainer.train()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = train(args.per_device_batch, args.steps)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(state, args.out)
    if torch.distributed.is_initialized():
        # torch 2.13 CPU runs sometimes abort at interpreter exit; leave explicitly (reference: Distributed).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        os._exit(0)


if __name__ == "__main__":
    main()
