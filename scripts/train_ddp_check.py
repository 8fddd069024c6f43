"""Train a tiny LLaDA for a few steps, alone or under `torchrun` (CPU, gloo: DDP or FSDP2); save the final weights.

    torchrun --nproc_per_node 2 scripts/train_ddp_check.py --out ddp.pt --per-device-batch 2
    torchrun --nproc_per_node 2 scripts/train_ddp_check.py --out fsdp.pt --per-device-batch 2 --fsdp --runs full lora
    python scripts/train_ddp_check.py --out single.pt --per-device-batch 4 [--runs full lora]

Both runs see the same global batches and the same noise (`DiffusionTrainer` seeds each row's noise by its dataset
index and the epoch), so their weights agree up to float reduction order. With `--fsdp` the model is loaded the way
`llada-hf train --fsdp_size 2` loads it (`load_model(..., distributed_config=fsdp_config())`: FSDP2, every weight a
`DTensor` shard); a callback records the sharding at each step, and the weights are gathered with `gather_unsharded`.
The `lora` run trains LoRA adapters (r 4) on the frozen (sharded) base. Under torchrun the output is rank 0's
`{run: {"state": state dict, "sharding": [per-step records]}}` (FSDP adds `"fsdp_trap"`: the error the Trainer's
`--fsdp` gets on CPU); the DDP form (no `--runs`) saves the full run's state dict alone, as before.
tests/test_training.py and tests/test_fsdp.py import `train` from here.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments

from llada_hf.training import (
    DiffusionCollator,
    DiffusionTrainer,
    fsdp_config,
    gather_unsharded,
    get_lora_model,
    is_sharded,
    load_model,
)


def toy_rows(count: int = 32, seed: int = 0) -> list[dict]:
    """Prompt/answer pairs of random ids (ragged; the collator pads to a fixed length)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        prompt_len, answer_len = (int(v) for v in torch.randint(2, 6, (2,), generator=generator))
        ids = torch.randint(0, 256, (prompt_len + answer_len,), generator=generator).tolist()
        rows.append({"prompt_ids": ids[:prompt_len], "answer_ids": ids[prompt_len:]})
    return rows


def build_model(lora: bool = False, distributed_config=None) -> torch.nn.Module:
    """The seeded tiny model (as `llada-hf train --model_name_or_path tiny` builds it), with LoRA adapters if asked."""
    model = load_model("tiny", seed=0, distributed_config=distributed_config)
    if lora:
        torch.manual_seed(1)  # the same adapter init whether or not loading consumed random numbers
        model = get_lora_model(model, r=4, lora_alpha=8)
    return model


class ShardingRecorder(TrainerCallback):
    """After each optimizer step: how many parameters are `DTensor` shards, and this rank's share of their elements."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        shards = [p for p in model.parameters() if isinstance(p, DTensor)]
        plain = [(n, p) for n, p in model.named_parameters() if not isinstance(p, DTensor)]
        self.records.append(
            {
                "step": state.global_step,
                "dtensor_params": len(shards),
                "plain_params": len(plain),
                "plain_trainable": sorted(n for n, p in plain if p.requires_grad),
                "local_fraction": (
                    sum(p.to_local().numel() for p in shards) / sum(p.numel() for p in shards) if shards else 1.0
                ),
                "dtensor_trainable": sum(p.requires_grad for p in shards),
            }
        )


def _args(output_dir: str, per_device_batch: int, steps: int, grad_accum: int, **kwargs) -> TrainingArguments:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs.setdefault("ddp_backend", "gloo")
    return TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=grad_accum, learning_rate=1e-3, warmup_steps=0, save_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1, **kwargs,
    )  # fmt: skip


def _collator(mode: str) -> DiffusionCollator:
    return DiffusionCollator(mask_token_id=1000, pad_token_id=1001, mode=mode, max_length=12, pad_to_max_length=True)


def train(
    per_device_batch: int,
    steps: int = 3,
    grad_accum: int = 1,
    mode: str = "sft",
    lora: bool = False,
    fsdp: bool = False,
    record: list | None = None,
    **kwargs,
) -> dict:
    """A few seeded steps from the same initial weights; returns the final (full, unsharded) state dict.

    Plain and DDP runs return it on every rank; FSDP runs on rank 0 only ({} elsewhere). `record`, if given, receives
    the `ShardingRecorder` records.
    """
    model = build_model(lora, fsdp_config() if fsdp else None)
    recorder = ShardingRecorder()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DiffusionTrainer(
            model=model, args=_args(tmp, per_device_batch, steps, grad_accum, **kwargs),
            train_dataset=Dataset.from_list(toy_rows()), data_collator=_collator(mode), callbacks=[recorder],
        )  # fmt: skip
        trainer.train()
    if record is not None:
        record.extend(recorder.records)
    if is_sharded(model):
        model = gather_unsharded(model)  # collective; None on ranks other than 0
        if model is None:
            return {}
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def fsdp_trap_message() -> str | None:
    """The error `DiffusionTrainer` raises for the Trainer's own `--fsdp` on CPU (else it would silently run DDP)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            DiffusionTrainer(
                model=build_model(), args=_args(tmp, 2, 1, 1, fsdp="full_shard"),
                train_dataset=Dataset.from_list(toy_rows()), data_collator=_collator("sft"),
            )  # fmt: skip
        except ValueError as error:
            return str(error)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (needs torchrun, 2+ processes)")
    parser.add_argument("--runs", nargs="*", choices=["full", "lora"], help="save {run: {state, sharding}}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.runs:
        results: dict = {}
        for run in args.runs:
            records: list = []
            state = train(args.per_device_batch, args.steps, lora=run == "lora", fsdp=args.fsdp, record=records)
            results[run] = {"state": state, "sharding": records}
        if args.fsdp:
            results["fsdp_trap"] = fsdp_trap_message()
    else:
        results = train(args.per_device_batch, args.steps, fsdp=args.fsdp)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, args.out)
    if torch.distributed.is_initialized():
        # torch 2.13 CPU runs sometimes abort at interpreter exit; leave explicitly (reference: Distributed).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        os._exit(0)


if __name__ == "__main__":
    main()
