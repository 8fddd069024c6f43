"""`DiffusionTrainer`: the `Trainer` for masked-diffusion objectives, configured by `DiffusionTrainingArguments`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import CausalLMOutput

from .data import DataReport, DiffusionCollator, prepare_dataset
from .distributed import FSDP_TRAP, ParallelismError, fsdp_requested
from .losses import (
    DEFAULT_EPS,
    EVAL_EPOCH,
    INDEX_COLUMN,
    annealed_attention_mask,
    block_diffusion_logits,
    check_token_reweighting,
    diffusion_loss,
    mask_batch,
    sample_seed,
)


@dataclass
class DiffusionTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the diffusion hyper-parameters: the one place each is set (`llada-hf train` parses
    these flags too). Checked on creation: a bad value raises `ValueError` naming it and the accepted range."""

    eps: float = field(default=DEFAULT_EPS, metadata={"help": "Minimum masking probability, in (0, 1]"})
    random_length_prob: float | None = field(
        default=None,
        metadata={"help": "Pre-training: share of batches cut to a random length, in [0, 1] (default: 0 in the "
                  "library, the paper's 0.01 for `llada-hf train --mode pretrain`)"},
    )  # fmt: skip
    noise_seed: int | None = field(default=None, metadata={"help": "Seed of the masking noise (default: --seed)"})
    attention_anneal_steps: int = field(default=0, metadata={"help": "Causal -> full attention over N steps"})
    reweight_gamma: float = field(
        default=0.0,
        metadata={"help": "Token-level reweighting alpha (1 - exp(-CE))^gamma CE (Ye et al. 2025); 0: plain loss"},
    )
    reweight_alpha: float = field(default=1.0, metadata={"help": "Scale of the token-level reweighting"})
    block_length: int = field(
        default=0,
        metadata={"help": "Block diffusion (LLaDA2's training): blocks of N tokens over [noisy | clean]; 0: off"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_diffusion()

    def check_diffusion(self) -> None:
        """Refuse values that would train nothing or NaN (each message names the flag and the accepted values)."""
        if not math.isfinite(self.learning_rate) or self.learning_rate < 0:
            raise ValueError(f"--learning_rate must be a finite number >= 0, got {self.learning_rate}")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps <= 1):
            raise ValueError(f"--eps must be in (0, 1], got {self.eps}")
        prob = self.random_length_prob
        if prob is not None and not (isinstance(prob, (int, float)) and 0 <= prob <= 1):
            raise ValueError(f"--random_length_prob must be in [0, 1], got {prob}")
        if self.attention_anneal_steps < 0:
            raise ValueError(f"--attention_anneal_steps must be 0 (off) or more, got {self.attention_anneal_steps}")
        if not isinstance(self.block_length, int) or self.block_length < 0:
            raise ValueError(f"--block_length must be 0 (off) or a block size >= 1, got {self.block_length}")
        if self.block_length and self.attention_anneal_steps:
            raise ValueError("--block_length and --attention_anneal_steps are two attention masks: choose one")
        try:
            check_token_reweighting(self.reweight_gamma, self.reweight_alpha)
        except ValueError as error:
            raise ValueError(f"--{error}") from None

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments, **diffusion: Any) -> DiffusionTrainingArguments:
        """A copy of plain `TrainingArguments` (already checked by their own `__post_init__`) with diffusion values."""
        new = cls.__new__(cls)
        new.__dict__.update(vars(args))
        for item in fields(cls):
            if item.name in DIFFUSION_FIELDS:
                setattr(new, item.name, diffusion.get(item.name, item.default))
        new.check_diffusion()
        return new


DIFFUSION_FIELDS = (
    "eps",
    "random_length_prob",
    "noise_seed",
    "attention_anneal_steps",
    "reweight_gamma",
    "reweight_alpha",
    "block_length",
)


def _resolve_arguments(args: TrainingArguments | None, legacy: dict[str, Any]) -> DiffusionTrainingArguments:
    """`DiffusionTrainingArguments` from `args`, with the values still given the old ways (the collator's `eps`,
    `random_length_prob`, `seed`; the Trainer's keyword arguments) filled in; a value given twice must agree."""
    if args is None:
        args = TrainingArguments(output_dir="trainer_output")
    if not isinstance(args, DiffusionTrainingArguments):
        args = DiffusionTrainingArguments.from_training_arguments(args)
    defaults = {
        item.name: item.default for item in fields(DiffusionTrainingArguments) if item.name in DIFFUSION_FIELDS
    }
    for name, value in legacy.items():
        if value is None:
            continue
        current = getattr(args, name)
        if current != defaults[name] and current != value:
            raise ValueError(f"{name} is set twice with different values ({current} in the arguments, {value} given)")
        setattr(args, name, value)
    args.check_diffusion()
    return args


class _NoiseEpoch(TrainerCallback):
    """Keeps `DiffusionTrainer.noise_epoch` = the epoch being trained (also right after resuming mid-epoch)."""

    def __init__(self, trainer: DiffusionTrainer) -> None:
        self.trainer = trainer
        self.started = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = False

    def on_epoch_begin(self, args, state, control, **kwargs):
        # A resumed run starts in epoch floor(state.epoch) (the Trainer's `epochs_trained`), then counts up.
        epoch = math.floor(state.epoch or 0) if not self.started else self.trainer.noise_epoch + 1
        self.trainer.noise_epoch, self.started = epoch, True


class DiffusionTrainer(Trainer):
    """`Trainer` for masked-diffusion objectives; pass a `DiffusionCollator` as `data_collator`.

    Datasets that are not prepared yet (no `INDEX_COLUMN`) are validated and tokenised once here (`prepare_dataset`
    with the collator's mode and `max_length`; the tokenizer is `processing_class` or the collator's), so raw rows in
    any accepted format work, and bad rows fail before the first step. `compute_loss` noises the padded batch
    (`mask_batch`: row i's generator is seeded by `sample_seed(seed, row index, epoch)`; evaluation uses
    `EVAL_EPOCH`, so `eval_loss` sees the same masks every time) and computes `diffusion_loss`, normalised per batch:
    the Trainer divides it by the accumulation steps (`loss_is_scaled_for_ga = False`). Only public `Trainer` hooks
    are used; `remove_unused_columns` is turned off (the collator reads `prompt_length` and `sample_index`).
    A model sharded at load time (`fsdp_config`) trains as it is; the Trainer's `--fsdp` is refused where accelerate
    would not apply it (CPU: it would silently run plain DDP).
    `attention_anneal_steps > 0` trains with `annealed_attention_mask`, from causal to full over that many steps
    (AR -> diffusion adaptation). `reweight_gamma` > 0 trains with token-level reweighting (`diffusion_loss`);
    `eval_loss` stays the plain ELBO term, so runs with and without it compare on one scale. `create_model_card` adds
    the objective and the data reports to the Trainer's card.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: DiffusionCollator | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        attention_anneal_steps: int | None = None,
        reweight_gamma: float | None = None,
        reweight_alpha: float | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(data_collator, DiffusionCollator):
            raise TypeError("DiffusionTrainer needs a DiffusionCollator as data_collator.")
        legacy = dict(
            eps=data_collator.eps, random_length_prob=data_collator.random_length_prob,
            noise_seed=data_collator.seed, attention_anneal_steps=attention_anneal_steps,
            reweight_gamma=reweight_gamma, reweight_alpha=reweight_alpha,
        )  # fmt: skip
        args = _resolve_arguments(args, legacy)
        args.remove_unused_columns = False  # the collator needs `prompt_length` and `sample_index`
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = False  # every forward uses every weight: skip DDP's graph scan
        self.data_reports: dict[str, DataReport] = {}
        tokenizer = processing_class if processing_class is not None else data_collator.tokenizer
        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)  # ids beyond it fail at step 1

        def prepare(dataset: Any, name: str) -> Any:  # validate and tokenise once, unless already prepared
            if dataset is None or INDEX_COLUMN in (getattr(dataset, "column_names", None) or []):
                return dataset
            dataset, self.data_reports[name] = prepare_dataset(
                dataset, tokenizer, mode=data_collator.mode, max_length=data_collator.max_length,
                eos_token_id=data_collator.pad_token_id, name=name, vocab_size=vocab_size,
            )  # fmt: skip
            return dataset

        with args.main_process_first(desc="dataset preparation"):
            train_dataset = prepare(train_dataset, "train")
            if isinstance(eval_dataset, dict):
                eval_dataset = {key: prepare(value, f"eval_{key}") for key, value in eval_dataset.items()}
            else:
                eval_dataset = prepare(eval_dataset, "eval")
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)
        if fsdp_requested(self.args) and not (self.is_fsdp_enabled or getattr(self, "is_fsdp_xla_enabled", False)):
            raise ParallelismError(FSDP_TRAP)  # silently plain DDP otherwise (CPU)
        if self.args.label_names is None and "labels" not in self.label_names:
            self.label_names = ["labels"]  # evaluation computes the loss from the batch's labels
        self.noise_epoch = 0
        self.add_callback(_NoiseEpoch(self))

    @property
    def noise_seed(self) -> int:
        return self.args.seed if self.args.noise_seed is None else self.args.noise_seed

    # Read-only views of the arguments, under the names this class has always had.
    attention_anneal_steps = property(lambda self: self.args.attention_anneal_steps)
    reweight_gamma = property(lambda self: self.args.reweight_gamma)
    reweight_alpha = property(lambda self: self.args.reweight_alpha)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Noise the batch (each row from its own seeded generator), one forward, `diffusion_loss`."""
        collator, args = self.data_collator, self.args
        if INDEX_COLUMN not in inputs:
            raise KeyError(f"batches need {INDEX_COLUMN!r} (rows of a dataset prepared by `prepare_dataset`).")
        epoch = self.noise_epoch if model.training else EVAL_EPOCH
        seeds = [sample_seed(self.noise_seed, index, epoch) for index in inputs[INDEX_COLUMN].tolist()]
        length_rule = (args.random_length_prob or 0.0) if collator.mode == "pretrain" and model.training else 0.0
        noised = mask_batch(
            inputs["input_ids"], inputs["labels"], collator.mask_token_id, seeds,
            attention_mask=inputs.get("attention_mask"), eps=args.eps, random_length_prob=length_rule,
        )  # fmt: skip
        attention_mask = noised["attention_mask"]
        if self.attention_anneal_steps > 0 and model.training:
            progress = self.state.global_step / self.attention_anneal_steps
            if progress < 1:
                ids = noised["input_ids"]
                dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
                attention_mask = annealed_attention_mask(ids.shape[1], progress, attention_mask, dtype, ids.device)
        if args.block_length:
            clean = inputs["input_ids"]
            logits = block_diffusion_logits(model, noised["input_ids"], clean, args.block_length, attention_mask)
            outputs = CausalLMOutput(logits=logits)
        else:
            outputs = model(input_ids=noised["input_ids"], attention_mask=attention_mask)
        reweighting = (
            dict(reweight_gamma=self.reweight_gamma, reweight_alpha=self.reweight_alpha) if model.training else {}
        )
        loss = diffusion_loss(
            outputs.logits, noised["labels"], noised["p_mask"], noised["loss_normalizer"], **reweighting
        )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss only: gathering (b, l, vocab) logits for metrics would cost far more than the evaluation itself."""
        return super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """The Trainer's card, from the same arguments and `TrainingSummary`, for a model that needs `llada_hf`.

        Metadata: `library_name: llada_hf`, `pipeline_tag: text-generation`, the tags plus `llada`,
        `masked-diffusion`, and `base_model` only when `finetuned_from` (default: the model's `_name_or_path`) is a
        hub id (a local folder would render as a broken link). Body: the objective and its settings, the data
        reports, a usage section (install + import, or the remote-code export) and the Trainer's hyper-parameters.
        """
        if not self.is_world_process_zero():
            return
        from huggingface_hub import ModelCard
        from transformers.modelcard import TrainingSummary

        tags = list(dict.fromkeys([*([tags] if isinstance(tags, str) else tags or []), "llada", "masked-diffusion"]))
        model = self.accelerator.unwrap_model(self.model)
        base = finetuned_from if finetuned_from is not None else getattr(model.config, "_name_or_path", None)
        summary = TrainingSummary.from_trainer(
            self, language=language, license=license, tags=tags, model_name=model_name, finetuned_from=base or "",
            tasks=tasks or "text-generation", dataset_tags=dataset_tags, dataset=dataset, dataset_args=dataset_args,
        )  # fmt: skip
        summary.finetuned_from = base if base and is_hub_id(str(base)) else None
        metadata = dict(summary.create_metadata(), library_name="llada_hf", pipeline_tag="text-generation")
        card = ModelCard.from_template(
            _card_data(metadata), template_str=CARD_TEMPLATE, **self._card_sections(summary)
        )
        card.save(Path(self.args.output_dir) / "README.md")

    def _card_sections(self, summary: Any) -> dict[str, str]:
        """The body of the card: what was trained, on what, how to use it, with which hyper-parameters."""
        from transformers.modelcard import make_markdown_table

        collator, args = self.data_collator, self.args
        objective = (
            "SFT: the prompt is never masked, answers are EOS-padded and the padding is a target; each masked answer "
            "token's cross-entropy / p_mask is divided by the answer length, the sum by the batch size"
            if collator.mode == "sft"
            else "pre-training ELBO: every token can be masked; the sum of cross-entropy / p_mask over masked tokens "
            f"is divided by the row length and the batch size; variable-length rule {args.random_length_prob or 0.0}"
        )
        description = (
            f"A LLaDA masked-diffusion language model ({type(self.accelerator.unwrap_model(self.model)).__name__}) "
            f"trained with `llada_hf`. Objective: {objective}. p_mask = (1 - eps) t + eps with t ~ U(0, 1) per row, "
            f"eps = {args.eps}; max_length {collator.max_length}; noise seed {self.noise_seed}"
            + (
                f"; token-level reweighting alpha (1 - exp(-CE))^gamma CE with alpha {args.reweight_alpha}, "
                f"gamma {args.reweight_gamma} (Ye et al. 2025; eval_loss unweighted)"
                if args.reweight_gamma or args.reweight_alpha != 1.0
                else ""
            )
            + (
                f"; attention annealed from causal to full over {n} steps."
                if (n := args.attention_anneal_steps)
                else "."
            )
        )
        base = summary.finetuned_from
        origin = f"Fine-tuned from [{base}](https://huggingface.co/{base})" if base else "Trained"
        data = "\n".join(f"- {report.summary()}" for report in self.data_reports.values()) or "Not recorded."
        hyper = "\n".join(f"- {name}: {value}" for name, value in (summary.hyperparameters or {}).items())
        results = make_markdown_table(summary.eval_lines) if summary.eval_lines else ""
        repo = args.hub_model_id or Path(args.output_dir).name
        return dict(
            model_name=summary.model_name, origin=origin, description=description, data=data, repo=repo,
            hyperparameters=hyper or "Not recorded.", results=results,
        )  # fmt: skip


def is_hub_id(name: str) -> bool:
    """A hub repository id (`org/name` or `name`), not a local path or a `TINY_CONFIGS` name."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from ..loading import TINY_CONFIGS, looks_local

    if name in TINY_CONFIGS or looks_local(name) or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _card_data(metadata: dict[str, Any]) -> Any:
    from huggingface_hub import ModelCardData

    metadata = {key: value for key, value in metadata.items() if value not in (None, [], "")}
    index = metadata.pop("model-index", None)
    data = ModelCardData(**metadata)
    if index and index[0].get("results"):
        data.model_index = index  # kept as the Trainer wrote it (evaluation results)
    return data


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ origin }} with [llada_hf](https://github.com/llada-hf/llada_hf) (masked diffusion: the model fills masked
positions of a canvas over several steps instead of writing left to right).

## Model description

{{ description }}

## Usage

The model classes and the diffusion sampler come with the `llada_hf` package:

```bash
pip install llada_hf
```

```python
import llada_hf  # registers the LLaDA families with the Auto classes
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{{ repo }}")
tokenizer = AutoTokenizer.from_pretrained("{{ repo }}")
ids = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Hello!"}], add_generation_prompt=True, return_tensors="pt", return_dict=False
)
out = model.generate(ids, max_new_tokens=64)
print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
```

Without the package: export a copy that carries its own code, then load it with `trust_remote_code=True`:

```bash
llada-hf export --model {{ repo }} --format remote-code --output exported
```

## Training and evaluation data

{{ data }}

## Training procedure

### Training hyperparameters

{{ hyperparameters }}

{{ results }}
"""
