"""Sharded training (FSDP2 at load time): the settings, the CPU trap of the Trainer's `--fsdp`, gathering a copy."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn
from transformers import TrainingArguments

from .conversion import _quiet_peft

# The first release whose `Trainer` trains a model sharded at load time (no DDP wrap, LoRA adapters kept in sync).
FSDP_MIN_TRANSFORMERS = "5.19"
FSDP_TRAP = (
    "the Trainer's --fsdp (and accelerate's FSDP config) shards only on accelerators (GPU, ...); on CPU the run "
    "would silently fall back to plain DDP, every rank holding all weights. For FSDP on CPU (gloo) or GPU use the "
    "native FSDP2 path: llada-hf train --fsdp_size N under torchrun --nproc_per_node N (library: "
    "load_model(..., distributed_config=fsdp_config()))"
)


class ParallelismError(ValueError):
    """A distributed setting that cannot do what it says, found before training starts."""


def fsdp_requested(args: TrainingArguments) -> bool:
    """Whether FSDP was asked of the Trainer/accelerate (`--fsdp ...`, or an accelerate FSDP config)."""
    from transformers.utils import strtobool

    return bool(args.fsdp) or bool(strtobool(os.environ.get("ACCELERATE_USE_FSDP", "false")))


def fsdp_config(fsdp_size: int | None = None):
    """`DistributedConfig(fsdp_size=N)` for `load_model` / `from_pretrained`: FSDP2 over the N processes of a
    `torchrun` launch, on CPU (gloo) as on GPUs.

    `from_pretrained` then applies torch's `fully_shard` following the model's FSDP plan (embedding, each decoder
    layer, final norm + head, then the root): every rank keeps 1/N of each weight as a `DTensor`, gathers a layer's
    weights for its forward and backward, and reduce-scatters the gradients, so the optimizer state is sharded too.
    `DiffusionTrainer` trains such a model without wrapping it again (no DDP); LoRA adapters added afterwards stay
    replicated, kept equal across ranks by the Trainer. N defaults to `WORLD_SIZE` and must equal it.
    """
    import transformers
    from packaging.version import Version
    from transformers.distributed import DistributedConfig

    if Version(transformers.__version__) < Version(FSDP_MIN_TRANSFORMERS):
        raise ParallelismError(
            f"FSDP training of a model sharded at load time needs transformers>={FSDP_MIN_TRANSFORMERS} (Trainer "
            f"support); this is {transformers.__version__}"
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    size = world_size if fsdp_size is None else fsdp_size
    if size < 2 or size != world_size:
        raise ParallelismError(
            f"fsdp_size {size} needs exactly that many processes (torchrun --nproc_per_node {max(size, 2)}); "
            f"WORLD_SIZE is {world_size}"
        )
    return DistributedConfig(fsdp_size=size)


def is_sharded(model: nn.Module) -> bool:
    """True if any parameter of `model` (or of the base of a peft model) is a `DTensor` shard."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


def gather_unsharded(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded, CPU) copy of an FSDP2-sharded model or peft model on rank 0; `None` on the other ranks.

    Collective: call it on every rank. Used to merge LoRA adapters after sharded training (peft cannot add a full
    delta to `DTensor` shards). Rank 0 holds the full weights once, in CPU memory.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # as the Trainer does: a forward leaves the norm + head group unsharded
        if isinstance(module, FSDPModule):
            module.reshard()
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = copy.deepcopy(base.config)
    config.distributed_config = None  # the copy is not sharded (and must not gather when saved)
    model_class = next(cls for cls in type(base).__mro__ if not issubclass(cls, FSDPModule))  # FSDP<Class> -> Class
    plain = model_class(config)
    plain.generation_config = copy.deepcopy(base.generation_config)
    if base is not model:  # re-create the adapters, then load base and adapter weights together
        from peft import get_peft_model

        with _quiet_peft():
            plain = get_peft_model(plain, copy.deepcopy(model.peft_config[model.active_adapter]))
    plain.load_state_dict(state)
    return plain
