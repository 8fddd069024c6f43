"""Tensor-parallel check for LLaDA: run under `torchrun --nproc_per_node N scripts/tp_check.py MODEL_DIR OUT_DIR`.

Every rank loads MODEL_DIR twice, unsharded and with `DistributedConfig(tp_size=N)` (the config's
`base_model_tp_plan` + the head's `_tp_plan`), feeds both the same inputs and writes `OUT_DIR/rank{r}.json`: how each
weight was sharded, the max |logits difference|, whether greedy generate() gave identical tokens, and the loss and
gradients of one training step. transformers picks the backend: gloo on CPU (tests/test_sharding.py), nccl on GPUs.
`--also-tp-plan-auto` also loads with the older `tp_plan="auto"` keyword (deprecated, still accepted by 5.23).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from transformers.distributed import DistributedConfig

from llada_hf import LLaDAModelLM


def sharding_report(model: torch.nn.Module) -> dict[str, dict]:
    """Global and local shape and placements of every parameter (plain tensors: local = global, placements None)."""
    report = {}
    for name, param in model.named_parameters():
        data = param.data
        local = data.to_local() if hasattr(data, "to_local") else data
        report[name] = {
            "global_shape": list(data.shape),
            "local_shape": list(local.shape),
            "placements": [str(p) for p in data.placements] if hasattr(data, "placements") else None,
        }
    return report


def compare(reference: LLaDAModelLM, sharded: LLaDAModelLM, device: torch.device) -> dict:
    """Logits and greedy generate() of `sharded` against `reference`, on inputs identical on every rank."""
    generator = torch.Generator().manual_seed(1234)
    vocab, mask_id = reference.config.vocab_size, reference.config.mask_token_id
    ids = torch.randint(0, mask_id, (2, 9), generator=generator).to(device)
    # A left-padded batch: the padding mask path must shard the same way.
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0
    pad = reference.config.pad_token_id
    padded = ids.clone()
    padded[1, :3] = pad
    with torch.no_grad():
        ref_logits = reference(ids).logits
        tp_logits = sharded(ids).logits
        ref_masked = reference(padded, attention_mask=attention_mask).logits
        tp_masked = sharded(padded, attention_mask=attention_mask).logits
    kwargs = dict(max_new_tokens=8, steps=4, block_length=4, do_sample=False)
    ref_tokens = reference.generate(padded, attention_mask=attention_mask, **kwargs)
    tp_tokens = sharded.generate(padded, attention_mask=attention_mask, **kwargs)
    return {
        "logits_type": type(tp_logits).__name__,
        "logits_shape": list(tp_logits.shape),
        "expected_logits_shape": [ids.shape[0], ids.shape[1], vocab],
        "max_abs_logits_diff": float((ref_logits - tp_logits).abs().max()),
        "max_abs_reference_logits": float(ref_logits.abs().max()),  # the scale of a derived tolerance
        "max_abs_logits_diff_padded": float(
            ((ref_masked - tp_masked).abs() * attention_mask[..., None]).max()  # padded rows' outputs are don't-care
        ),
        "generate_equal": bool(torch.equal(ref_tokens.cpu(), tp_tokens.cpu())),
        "generated": tp_tokens.tolist(),
        "reference_generated": ref_tokens.tolist(),
    }


def compare_training(reference: LLaDAModelLM, sharded: LLaDAModelLM, device: torch.device) -> dict:
    """One masked-diffusion loss + backward on both: the loss and every (gathered) gradient must agree."""
    generator = torch.Generator().manual_seed(99)
    config = reference.config
    labels = torch.randint(0, config.mask_token_id, (2, 12), generator=generator)
    p_mask = torch.rand((2, 1), generator=generator) * 0.8 + 0.1
    masked = torch.rand(labels.shape, generator=generator) < p_mask
    masked[:, 0] = True
    ids = torch.where(masked, config.mask_token_id, labels).to(device)
    labels = torch.where(masked, labels, -100).to(device)
    losses = []
    for model in (reference, sharded):
        model.train()
        model.zero_grad(set_to_none=True)
        loss = model(ids, labels=labels, p_mask=p_mask.to(device)).loss
        loss.backward()
        losses.append(float(loss))
        model.eval()
    reference_grads = dict(reference.named_parameters())
    worst = 0.0
    largest = max(float(p.grad.abs().max()) for p in reference.parameters())
    for name, param in sharded.named_parameters():
        grad = param.grad
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        worst = max(worst, float((grad - reference_grads[name].grad).abs().max()))
    return {
        "loss": losses[1],
        "reference_loss": losses[0],
        "max_abs_grad_diff": worst,
        "max_abs_reference_grad": largest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--also-tp-plan-auto", action="store_true")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    world = int(os.environ["WORLD_SIZE"])
    sharded = LLaDAModelLM.from_pretrained(
        args.model_dir, dtype=dtype, distributed_config=DistributedConfig(tp_size=world)
    ).eval()
    rank = dist.get_rank()
    device = sharded.get_input_embeddings().weight.device
    reference = LLaDAModelLM.from_pretrained(args.model_dir, dtype=dtype).to(device).eval()
    result = {
        "rank": rank,
        "world_size": world,
        "backend": dist.get_backend(),
        "device": str(device),
        "tp_size": sharded.tp_size,
        "sharding": sharding_report(sharded),
        "distributed_config": compare(reference, sharded, device),
        "training": compare_training(reference, sharded, device),
    }
    if args.also_tp_plan_auto:
        auto = LLaDAModelLM.from_pretrained(args.model_dir, dtype=dtype, tp_plan="auto").eval()
        result["tp_plan_auto"] = compare(reference, auto, device)
        result["tp_plan_auto_sharded"] = sum(
            r["local_shape"] != r["global_shape"] for r in sharding_report(auto).values()
        )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    # torch 2.13 CPU runs sometimes abort at interpreter exit: tear down explicitly and skip the exit handlers.
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
