"""`llada-hf train`: flags (`ModelArguments`, `DataArguments`, `DiffusionTrainingArguments`) and `train_main`."""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..errors import UsageError
from ..loading import TINY_CONFIGS, ModelLoadError, load_config, load_model
from .conversion import DEFAULT_LORA_TARGETS, get_lora_model
from .data import DataReport, DiffusionCollator, load_rows, prepare_dataset
from .distributed import FSDP_TRAP, ParallelismError, fsdp_config, fsdp_requested, gather_unsharded
from .losses import INDEX_COLUMN, PAPER_RANDOM_LENGTH_PROB
from .rows import ROW_FORMATS, DataError
from .trainer import DiffusionTrainer, DiffusionTrainingArguments

# Modules LoRA must never adapt (embedding, norms, head): refused at parse time, named in the message.
FORBIDDEN_LORA_TARGETS = ("lm_head", "embed_tokens", "word_embeddings", "norm")

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Model flags; names as TRL's `ModelConfig` (`--use_peft`, `--lora_r`, `--lora_target_modules`, ...)."""

    model_name_or_path: str = field(
        default="tiny",
        metadata={"help": f"Checkpoint path/hub id, or a config name to train from scratch: {list(TINY_CONFIGS)}"},
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)"})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the model path; the tiny offline tokenizer for configs)"}
    )
    dtype: str | None = field(default=None, metadata={"help": "float32, bfloat16, ... (default: the checkpoint's)"})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, ... (default: sdpa)"})
    use_peft: bool = field(
        default=False, metadata={"aliases": ["--use_lora"], "help": "Train LoRA adapters instead of all weights"}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": f"Modules to adapt (space/comma-separated, or all-linear); default {DEFAULT_LORA_TARGETS}"},
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: 4-bit base (needs bitsandbytes + CUDA)"})
    fsdp_size: int = field(
        default=1,
        metadata={"help": "Shard weights, gradients and optimizer state over N processes with FSDP2 (N = torchrun "
                  "--nproc_per_node; CPU/gloo or GPU); 1: off. Saves need --save_strategy no or --save_only_model"},
    )  # fmt: skip


@dataclass
class DataArguments:
    """Data flags: a local file (`--train_file`) or any `datasets.load_dataset` source (`--dataset_name`)."""

    train_file: str | None = field(
        default=None, metadata={"help": f"Training rows (.jsonl/.json/.csv/.parquet/.txt): {ROW_FORMATS}"}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "load_dataset path: a hub id, a local folder, or a builder (json, csv, parquet, text) "
                  "with --data_files"},
    )  # fmt: skip
    dataset_config: str | None = field(default=None, metadata={"help": "load_dataset configuration name"})
    data_files: list[str] | None = field(default=None, metadata={"help": "load_dataset data_files"})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on"})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Split for eval_loss (e.g. test)"})
    mode: str = field(default="sft", metadata={"help": "sft or pretrain", "choices": ["sft", "pretrain"]})
    eval_file: str | None = field(default=None, metadata={"help": "Rows for eval_loss (same formats)"})
    eval_size: int = field(default=0, metadata={"help": "Rows held out of the start of the training data for eval"})
    max_length: int = field(default=512, metadata={"help": "Truncation length; pre-training block size"})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every row to max_length"})
    packing: bool = field(
        default=True,
        metadata={"help": "Pre-training: concatenate rows into max_length blocks (false: each row cut to max_length)"},
    )


def _load_tokenizer(model_args: ModelArguments) -> Any:
    from transformers import AutoTokenizer

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name in TINY_CONFIGS:
        try:
            from ..tokenizer import build_tiny_tokenizer
        except ImportError:
            return None
        return build_tiny_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(name, revision=model_args.model_revision)
    except (OSError, ValueError):
        return None


def _training_data(
    data_args: DataArguments, tokenizer: Any, eos: int, vocab_size: int | None = None
) -> tuple[Any, Any, list[DataReport]]:
    """Load, validate, tokenise and split the data (every row checked before the model is even loaded)."""
    if (data_args.train_file is None) == (data_args.dataset_name is None):
        raise DataError("give exactly one of --train_file and --dataset_name")
    if data_args.train_file is not None:
        rows, locate, label = load_rows(data_args.train_file)
    else:
        rows, locate, label = load_rows(
            dataset_name=data_args.dataset_name, dataset_config=data_args.dataset_config,
            data_files=data_args.data_files, split=data_args.dataset_train_split,
        )  # fmt: skip
    evals = []  # (rows, locate, label) of each evaluation source
    if data_args.eval_size:
        if data_args.eval_size >= len(rows):
            raise DataError(
                f"--eval_size {data_args.eval_size} leaves nothing to train on: {label} has {len(rows)} rows"
            )
        size = data_args.eval_size
        evals.append((rows.select(range(size)), locate, f"{label} (first {size} rows)"))
        rows, train_locate = rows.select(range(size, len(rows))), lambda i: locate(i + size)
        label = f"{label} (rows {size}+)"
    else:
        train_locate = locate
    if data_args.eval_file is not None:
        evals.append(load_rows(data_args.eval_file))
    if data_args.dataset_test_split is not None:
        evals.append(
            load_rows(
                dataset_name=data_args.dataset_name, dataset_config=data_args.dataset_config,
                data_files=data_args.data_files, split=data_args.dataset_test_split,
            )
        )  # fmt: skip
    packing = data_args.packing and data_args.mode == "pretrain"
    common = dict(
        mode=data_args.mode, max_length=data_args.max_length, packing=packing, eos_token_id=eos, vocab_size=vocab_size
    )
    train, report = prepare_dataset(rows, tokenizer, name="train", locate=train_locate, source=label, **common)
    reports, eval_parts = [report], []
    for rows_, locate_, label_ in evals:
        part, report = prepare_dataset(rows_, tokenizer, name="eval", locate=locate_, source=label_, **common)
        reports.append(report)
        eval_parts.append(part)
    if not eval_parts:
        return train, None, reports
    from datasets import concatenate_datasets

    evaluation = concatenate_datasets(eval_parts).remove_columns(INDEX_COLUMN)
    return train, evaluation.add_column(INDEX_COLUMN, list(range(len(evaluation)))), reports


def _distributed_config(model_args: ModelArguments, training_args: TrainingArguments) -> Any:
    """`fsdp_config()` for `--fsdp_size N`, else None; refuses settings that would not shard or cannot work."""
    if fsdp_requested(training_args):
        if model_args.fsdp_size > 1:
            raise ParallelismError("give either --fsdp_size (native FSDP2) or the Trainer's --fsdp, not both")
        if training_args.device.type == "cpu":
            raise ParallelismError(FSDP_TRAP)
    if model_args.fsdp_size < 1:
        raise ParallelismError(f"--fsdp_size must be 1 (off) or more, got {model_args.fsdp_size}")
    if model_args.fsdp_size == 1:
        return None
    config = fsdp_config(model_args.fsdp_size)
    if training_args.deepspeed:
        raise ParallelismError("give either --fsdp_size (native FSDP2) or --deepspeed, not both")
    if model_args.load_in_4bit:
        raise ParallelismError("--fsdp_size with --load_in_4bit is not supported (4-bit weights are not sharded)")
    if training_args.resume_from_checkpoint is not None or (
        training_args.save_strategy != "no" and not training_args.save_only_model
    ):
        raise ParallelismError(
            "the Trainer cannot checkpoint or resume the optimizer of a model sharded at load time: pass "
            "--save_strategy no or --save_only_model (and no --resume_from_checkpoint) with --fsdp_size"
        )
    return config


def _lora_targets(model_args: ModelArguments) -> list[str] | str:
    """`--lora_target_modules` as peft takes it; refuses the embedding, norms and head (never adapted)."""
    names = [part.strip() for item in model_args.lora_target_modules or [] for part in item.split(",")]
    targets: list[str] | str = [name for name in names if name] or list(DEFAULT_LORA_TARGETS)
    bad = [name for name in targets if any(part in name for part in FORBIDDEN_LORA_TARGETS)]
    if bad:
        raise UsageError(
            f"--lora_target_modules: {', '.join(bad)} cannot be adapted (not the embedding, norms or head); use "
            f"attention/MLP projections such as {' '.join(DEFAULT_LORA_TARGETS)}, or all-linear"
        )
    return targets[0] if targets == ["all-linear"] else targets


def parse_train_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, DiffusionTrainingArguments, list[str] | str]:
    """Parse and check every `llada-hf train` flag before anything is loaded or written; `UsageError` names the flag.

    Returns the three argument groups and the LoRA target modules. The pre-training default of `--random_length_prob`
    is the paper's `PAPER_RANDOM_LENGTH_PROB` (SFT: 0).
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, DiffusionTrainingArguments), prog="llada-hf train")
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # a dataclass check (`DiffusionTrainingArguments`, `TrainingArguments`)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(message) from None
    if training_args.random_length_prob is None:
        training_args.random_length_prob = PAPER_RANDOM_LENGTH_PROB if data_args.mode == "pretrain" else 0.0
    if data_args.max_length < 1:
        raise UsageError(f"--max_length must be at least 1, got {data_args.max_length}")
    if data_args.eval_size < 0:
        raise UsageError(f"--eval_size must be 0 or more, got {data_args.eval_size}")
    given = sys.argv[1:] if argv is None else argv
    lora_flags = sorted({arg.split("=")[0] for arg in given if arg.startswith(("--lora_", "--lora-"))})
    if lora_flags and not model_args.use_peft:
        raise UsageError(f"{', '.join(lora_flags)} without --use_peft: add --use_peft to train LoRA adapters")
    targets = _lora_targets(model_args) if model_args.use_peft else []
    if model_args.use_peft:
        if model_args.lora_r < 1:
            raise UsageError(f"--lora_r must be a positive integer (the adapter rank), got {model_args.lora_r}")
        if not math.isfinite(model_args.lora_alpha) or model_args.lora_alpha <= 0:
            raise UsageError(f"--lora_alpha must be a positive number, got {model_args.lora_alpha}")
        if not 0 <= model_args.lora_dropout < 1:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {model_args.lora_dropout}")
    resume = training_args.resume_from_checkpoint
    if resume is not None and not os.path.isdir(resume):
        raise UsageError(
            f"--resume_from_checkpoint {resume}: no such checkpoint folder (give an existing checkpoint-N folder)"
        )
    return model_args, data_args, training_args, targets


def train_main(argv: list[str] | None = None) -> int:
    """`llada-hf train`: masked-diffusion pre-training or SFT, full or LoRA, with `Trainer` (logging, eval, resume).

    Any `TrainingArguments` flag works (`--output_dir`, `--max_steps`, `--learning_rate`, `--eval_strategy steps
    --eval_steps N`, `--resume_from_checkpoint`, `--push_to_hub`, ...). Every row is validated before the model is
    loaded; flags are checked first (`parse_train_args`: `UsageError`, nothing written); data errors print one line
    and return 2. Ends with `save_metrics`, `save_state`, a model
    card and `save_model` (the merged model, plus `adapter/` for LoRA; pushed with `--push_to_hub`).
    """
    model_args, data_args, training_args, targets = parse_train_args(argv)
    if training_args.disable_tqdm:
        import datasets

        datasets.disable_progress_bars()
    try:
        distributed_config = _distributed_config(model_args, training_args)
        tokenizer = _load_tokenizer(model_args)
        config = load_config(model_args.model_name_or_path, model_args.model_revision)
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        with training_args.main_process_first(desc="dataset preparation"):
            train_dataset, eval_dataset, reports = _training_data(data_args, tokenizer, pad, config.vocab_size)
    except (DataError, ParallelismError, ModelLoadError, OSError) as error:  # bad data/settings, missing files
        print(f"llada-hf train: error: {error}", file=sys.stderr)
        return 2
    for report in reports:
        logger.info(report.summary())

    model = load_model(
        model_args.model_name_or_path, model_args.dtype, model_args.load_in_4bit, training_args.seed,
        revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
        distributed_config=distributed_config,
    )  # fmt: skip
    collator = DiffusionCollator(
        mask_token_id=config.mask_token_id,
        pad_token_id=pad,
        mode=data_args.mode,
        tokenizer=tokenizer,
        max_length=data_args.max_length,
        pad_to_max_length=data_args.pad_to_max_length,
    )
    if model_args.use_peft:
        model = get_lora_model(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, targets)
    trainer = DiffusionTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.data_reports.update({f"{report.name} ({report.source})": report for report in reports})
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(result.metrics, train_samples=len(train_dataset))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    if eval_dataset is not None:
        metrics = dict(trainer.evaluate(), eval_samples=len(eval_dataset))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    gathered = False  # FSDP + LoRA: rank 0 saves a merged, unsharded copy
    if model_args.use_peft:  # the adapter in adapter/, the merged model in output_dir (not for a 4-bit base)
        # every rank: peft gathers the state dict of a model sharded at load time (a collective); rank 0 writes
        trainer.model.save_pretrained(
            Path(training_args.output_dir) / "adapter", is_main_process=trainer.args.should_save
        )
        if distributed_config is not None:  # peft cannot merge into DTensor shards: merge a gathered copy
            plain, gathered = gather_unsharded(trainer.model), True
            if plain is not None:
                trainer.model = plain.merge_and_unload()
        elif not model_args.load_in_4bit:
            trainer.model = trainer.model.merge_and_unload()
    sources = [report.source for report in reports if report.source and report.name == "train"]
    card = dict(dataset=sources or None, model_name=Path(training_args.output_dir).name)
    if model_args.model_name_or_path not in TINY_CONFIGS:
        card["finetuned_from"] = model_args.model_name_or_path
    trainer.create_model_card(**card)
    if trainer.args.should_save or not gathered:  # a sharded full model: every rank joins the gather in save_model
        trainer.save_model()  # also pushes (with the card) when --push_to_hub is set
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
