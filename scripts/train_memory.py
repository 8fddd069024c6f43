"""Memory per parameter of full vs LoRA training (AdamW, fp32, CPU), each mode in a fresh subprocess.

    python scripts/train_memory.py                       # "tiny" and a 0.1 B-parameter config
    python scripts/train_memory.py --config tiny --steps 3

Two measures per mode, both divided by the model's total parameter count:
* state: bytes of parameters + gradients + optimizer state tensors after the steps (exact, from the tensors);
* peak RSS: the process's peak resident set size (`getrusage`) minus its RSS just before the model was built, so it
  adds activations, temporaries and allocator slack to the state.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

CONFIGS = {
    "tiny": {},
    "100m": dict(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
        max_position_embeddings=512, mask_token_id=31999, eos_token_id=2, pad_token_id=2, bos_token_id=1,
    ),
}  # fmt: skip


def _rss_bytes() -> int:
    """Current resident set size (Linux `/proc/self/statm`)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(config_name: str, mode: str, steps: int, batch: int, seq: int) -> dict:
    import torch

    from llada_hf import LLaDAConfig, LLaDAModelLM
    from llada_hf.training import TINY_CONFIGS, DiffusionCollator, diffusion_loss, get_lora_model, mask_batch

    torch.set_num_threads(2)
    params = dict(TINY_CONFIGS["tiny"], **CONFIGS[config_name])
    before = _rss_bytes()
    torch.manual_seed(0)
    model = LLaDAModelLM(LLaDAConfig(**params)).train()
    total = sum(p.numel() for p in model.parameters())
    if mode == "lora":
        model = get_lora_model(model, r=16, lora_alpha=32)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    cfg = model.config
    collator = DiffusionCollator(mask_token_id=cfg.mask_token_id, pad_token_id=cfg.pad_token_id, mode="pretrain")
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        ids = torch.randint(0, cfg.mask_token_id, (batch, seq), generator=generator)
        padded = collator([{"input_ids": row} for row in ids.tolist()])
        seeds = range(step * batch, (step + 1) * batch)
        inputs = mask_batch(padded["input_ids"], padded["labels"], cfg.mask_token_id, seeds)
        logits = model(input_ids=inputs["input_ids"]).logits
        diffusion_loss(logits, inputs["labels"], inputs["p_mask"], inputs["loss_normalizer"]).backward()
        optimizer.step()
        if step != steps - 1:
            optimizer.zero_grad(set_to_none=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    state = sum(p.numel() * p.element_size() for p in model.parameters())
    state += sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    state += sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    return {
        "config": config_name, "mode": mode, "params": total, "trainable": sum(p.numel() for p in trainable),
        "batch": batch, "seq": seq, "state_bytes_per_param": round(state / total, 2),
        "peak_rss_bytes_per_param": round(peak / total, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=list(CONFIGS), action="append")
    parser.add_argument("--mode", choices=["full", "lora"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    if args.mode:  # child: one measurement
        print(json.dumps(measure(args.config[0], args.mode, args.steps, args.batch, args.seq)))
        return
    for config in args.config or list(CONFIGS):
        for mode in ("full", "lora"):
            command = [sys.executable, __file__, "--config", config, "--mode", mode, "--steps", str(args.steps)]
            command += ["--batch", str(args.batch), "--seq", str(args.seq)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            print(output.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
