"""Masked-diffusion training for every LLaDA family, by responsibility:

* `losses`: the forward process (`forward_process`, `mask_batch`, per-row noise seeds `sample_seed`) and the losses
  (`diffusion_loss`, `pretraining_loss`, `sft_loss`), `annealed_attention_mask` for AR -> diffusion adaptation,
  `block_diffusion_mask` / `block_length=` for LLaDA2's block diffusion;
* `rows`: the accepted row formats, their validation (`DataError`) and tokenisation (`encode_example`);
* `data`: `load_rows`, `prepare_dataset` (validate + tokenise once, cut, pack), `DiffusionCollator` (padding only);
* `trainer`: `DiffusionTrainer` and `DiffusionTrainingArguments` (every diffusion hyper-parameter, once);
* `distributed`: FSDP2 sharding at load time (`fsdp_config`, `gather_unsharded`);
* `conversion`: LoRA (`lora_config`, `get_lora_model`, `save_trained`, `load_trained`) and `convert_llama_to_llada`;
* `cli`: `llada-hf train` (`train_main`);
* `sft_trainer` (needs the `[trl]` extra, imported on first use): `DiffusionSFTTrainer`, `DiffusionSFTConfig`.

Models of every family are loaded by `llada_hf.loading.load_model` (re-exported here). Everything is re-exported, so
`from llada_hf.training import X` works as it did when this was one module.
"""

from ..loading import TINY_CONFIGS, load_model
from .cli import DataArguments, ModelArguments, _distributed_config, train_main
from .conversion import (
    DEFAULT_LORA_TARGETS,
    convert_llama_to_llada,
    get_lora_model,
    load_trained,
    lora_config,
    save_trained,
)
from .data import DataReport, DiffusionCollator, load_rows, pack_sequences, prepare_dataset
from .distributed import (
    FSDP_MIN_TRANSFORMERS,
    FSDP_TRAP,
    ParallelismError,
    fsdp_config,
    fsdp_requested,
    gather_unsharded,
    is_sharded,
)
from .losses import (
    DEFAULT_EPS,
    EVAL_EPOCH,
    IGNORE_INDEX,
    INDEX_COLUMN,
    PAPER_RANDOM_LENGTH_PROB,
    annealed_attention_mask,
    block_diffusion_logits,
    block_diffusion_mask,
    diffusion_loss,
    forward_process,
    mask_batch,
    pretraining_loss,
    random_length_crop,
    sample_seed,
    sft_loss,
)
from .rows import ROW_FORMATS, DataError, encode_example
from .trainer import DiffusionTrainer, DiffusionTrainingArguments

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_LORA_TARGETS",
    "EVAL_EPOCH",
    "IGNORE_INDEX",
    "INDEX_COLUMN",
    "PAPER_RANDOM_LENGTH_PROB",
    "ROW_FORMATS",
    "TINY_CONFIGS",
    "DataArguments",
    "DataError",
    "DataReport",
    "DiffusionCollator",
    "DiffusionTrainer",
    "DiffusionSFTConfig",
    "DiffusionSFTTrainer",
    "DiffusionTrainingArguments",
    "FSDP_MIN_TRANSFORMERS",
    "FSDP_TRAP",
    "ModelArguments",
    "ParallelismError",
    "_distributed_config",
    "annealed_attention_mask",
    "block_diffusion_logits",
    "block_diffusion_mask",
    "convert_llama_to_llada",
    "diffusion_loss",
    "encode_example",
    "forward_process",
    "fsdp_config",
    "fsdp_requested",
    "gather_unsharded",
    "get_lora_model",
    "is_sharded",
    "load_model",
    "load_rows",
    "load_trained",
    "lora_config",
    "mask_batch",
    "pack_sequences",
    "prepare_dataset",
    "pretraining_loss",
    "random_length_crop",
    "sample_seed",
    "save_trained",
    "sft_loss",
    "train_main",
]


def __getattr__(name: str):
    """`DiffusionSFTTrainer` / `DiffusionSFTConfig` on first use: trl is optional (`pip install llada_hf[trl]`)."""
    if name in ("DiffusionSFTTrainer", "DiffusionSFTConfig"):
        from . import sft_trainer

        return getattr(sft_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
