"""`DiffusionSFTTrainer`: `trl.SFTTrainer` on masked-diffusion rails (needs the `[trl]` extra).

Plain `trl.SFTTrainer` computes a next-token loss (its fused LM head, or `labels` through the forward); the LLaDA
models refuse both at the first step (`refuse_next_token_loss`). This subclass keeps TRL's configuration, dataset
formats, PEFT handling, logging and hub integration, and swaps the two hooks that decide the objective:

* dataset preparation: `llada_hf.training.prepare_dataset`, the data path of `llada-hf train` (the prompt rendered
  with the chat template and generation prompt exactly as `generate()` / `pipeline` see it, the answer + EOT + EOS);
* the loss: `DiffusionTrainer.compute_loss` (per-row seeded noise, the SFT ELBO of `sft_loss` / `diffusion_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl import SFTConfig, SFTTrainer

from .data import DiffusionCollator, prepare_dataset
from .losses import INDEX_COLUMN
from .trainer import DiffusionTrainer, DiffusionTrainingArguments


@dataclass
class DiffusionSFTConfig(SFTConfig, DiffusionTrainingArguments):
    """`trl.SFTConfig` plus the diffusion fields of `DiffusionTrainingArguments` (inherited: defined once there).

    TRL's `max_length` caps the tokenised rows (answers cut, rows whose prompt fills it dropped, as `llada-hf train`).
    The loss is always on the answer only (the prompt is never masked), so `completion_only_loss` /
    `assistant_only_loss` are implied; `packing` and `padding_free` are refused (SFT rows are EOS-padded: the
    padding is a target that teaches where answers end).
    """


class DiffusionSFTTrainer(DiffusionTrainer, SFTTrainer):
    """`trl.SFTTrainer` that trains the masked-diffusion SFT objective on every TRL dataset format.

    Accepts TRL's rows (`messages`, `prompt`/`completion` strings, conversational `prompt`/`completion`, `text`)
    and the package's own (`prepare_dataset`). `args` may be a `DiffusionSFTConfig`, a plain `SFTConfig` (diffusion
    fields at their defaults) or None. `data_collator` defaults to a `DiffusionCollator` for the model's mask and
    EOS ids. `model` must be a model object (LLaDA family, optionally peft-wrapped); `peft_config` works as in TRL.
    """

    def __init__(
        self,
        model: Any,
        args: SFTConfig | None = None,
        data_collator: DiffusionCollator | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, str):
            raise TypeError("DiffusionSFTTrainer needs a model object: load it with `llada_hf.load_model` first.")
        if args is None:
            args = DiffusionSFTConfig(output_dir="trainer_output")
        elif not isinstance(args, DiffusionSFTConfig):
            if not isinstance(args, SFTConfig):
                raise TypeError(f"args must be a DiffusionSFTConfig or an SFTConfig, got {type(args).__name__}")
            args = DiffusionSFTConfig.from_training_arguments(args)
        for name in ("packing", "padding_free"):
            if getattr(args, name):
                raise ValueError(f"{name}=True is not supported: masked-diffusion SFT rows are EOS-padded, not packed")
        if kwargs.get("formatting_func") is not None:
            raise ValueError("formatting_func is not supported: pass rows in a TRL or llada_hf format (ROW_FORMATS)")
        if processing_class is None:
            raise ValueError("DiffusionSFTTrainer needs the tokenizer as processing_class (its chat template).")
        if data_collator is None:
            config = getattr(model, "config", None) or model.get_base_model().config
            data_collator = DiffusionCollator(
                mask_token_id=config.mask_token_id, pad_token_id=config.eos_token_id, max_length=args.max_length
            )
        super().__init__(
            model, args, data_collator, train_dataset, eval_dataset, processing_class=processing_class, **kwargs
        )

    def _prepare_dataset(
        self,
        dataset: Any,
        processing_class: Any,
        args: SFTConfig,
        packing: bool,
        formatting_func: Any,
        dataset_name: str,
    ) -> Any:
        """TRL's preparation hook -> `prepare_dataset` (the `llada-hf train` data path); prepared datasets pass."""
        if dataset is None or INDEX_COLUMN in (getattr(dataset, "column_names", None) or []):
            return dataset
        collator = self.data_collator
        dataset, self.data_reports[dataset_name] = prepare_dataset(
            dataset, processing_class, mode="sft", max_length=args.max_length, eos_token_id=collator.pad_token_id,
            name=dataset_name,
        )  # fmt: skip
        return dataset


__all__ = ["DiffusionSFTConfig", "DiffusionSFTTrainer"]
