"""Masked-diffusion training for LLaDA: losses, a noising collator, a `Trainer`, LoRA, AR->diffusion conversion, CLI.

The objectives follow the LLaDA paper (arXiv 2502.09992) and its GUIDELINES:

* pre-training: t ~ U(0, 1) per sequence, p_mask = (1 - eps) t + eps, every token masked with probability p_mask; the
  loss is sum over masked tokens of CE / p_mask, divided by b * l (all positions). With probability 1 % the batch is
  cut to a random length U{1..l} first (draw order: rand(1) [, randint], rand(b), rand(b, l)).
* SFT: the same forward process on [prompt | answer], the prompt never masked; answers are padded with EOS and the
  padding is a target; each masked token's CE / p_mask is divided by its sample's answer length (padding included),
  and the sum by the batch size.

Both are the same formula, (1/b) sum_i (1/n_i) sum_{j masked} CE_ij / p_ij with n_i the row's length (pre-training)
or answer length (SFT): `diffusion_loss`. `pretraining_loss` / `sft_loss` draw the noise from one generator in the
official order. `DiffusionCollator` draws it per sample at collation time (each step sees fresh noise) from a seed
that depends only on the sample's global position in the stream of batches, so gradient accumulation, DDP and resuming
see the same noise as one big uninterrupted batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from .modeling import LLaDAConfig, LLaDAModelLM

IGNORE_INDEX = -100
DEFAULT_EPS = 1e-3
# Attention + MLP projections (native names). Never the embedding, the norms or the head.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Small configs to train from scratch by name (smoke tests, toy tasks); special ids as the tiny tokenizer's.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, mask_token_id=1000, eos_token_id=1001, pad_token_id=1001, bos_token_id=1002,
    ),
    "small": dict(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=1024, mask_token_id=1000, eos_token_id=1001, pad_token_id=1001, bos_token_id=1002,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Forward process and losses


def forward_process(
    input_ids: torch.LongTensor,
    mask_token_id: int,
    *,
    eps: float = DEFAULT_EPS,
    generator: torch.Generator | None = None,
    prompt_lengths: torch.Tensor | Sequence[int] | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor, torch.Tensor]:
    """Mask each token with probability p_mask = (1 - eps) t + eps, t ~ U(0, 1) per row; prompts are never masked.

    Draws `rand(b)` then `rand(b, l)` from `generator` (on the generator's device). Returns `(noisy_ids, labels,
    p_mask)`: labels hold the original id where masked and -100 elsewhere; p_mask is (b, l), fp32.
    """
    b, length = input_ids.shape
    device = generator.device if generator is not None else input_ids.device
    t = torch.rand(b, generator=generator, device=device)
    p_mask = ((1 - eps) * t + eps)[:, None].expand(b, length)
    masked = torch.rand((b, length), generator=generator, device=device) < p_mask
    p_mask, masked = p_mask.to(input_ids.device), masked.to(input_ids.device)
    if prompt_lengths is not None:
        prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device)
        masked &= torch.arange(length, device=input_ids.device)[None, :] >= prompt_lengths[:, None]
    noisy = torch.where(masked, mask_token_id, input_ids)
    labels = torch.where(masked, input_ids, IGNORE_INDEX)
    return noisy, labels, p_mask.contiguous()


def diffusion_loss(
    logits: torch.Tensor, labels: torch.LongTensor, p_mask: torch.Tensor, normalizer: torch.Tensor | None = None
) -> torch.Tensor:
    """(1/b) sum_i (1/n_i) sum_{j: label != -100} CE(logits_ij, label_ij) / p_ij, in fp32.

    `normalizer` (b,) holds n_i: the answer length for SFT; by default the row length l, which gives the paper's
    pre-training normalisation by b * l. Unshifted: position j predicts token j.
    """
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    b, length = labels.shape
    weight = (labels != IGNORE_INDEX) / p_mask.float()
    per_row = (token_loss * weight).sum(-1)
    if normalizer is None:
        return per_row.sum() / (b * length)
    return (per_row / normalizer.to(per_row).clamp(min=1)).sum() / b


def random_length_crop(
    input_ids: torch.LongTensor, probability: float, generator: torch.Generator | None = None
) -> torch.LongTensor:
    """With `probability`, cut the whole batch to `randint(1, l + 1)` tokens (the paper's 1 % variable-length rule).

    Draws `rand(1)` and, only when cutting, `randint`, both from `generator`. Nothing is drawn if probability is 0.
    """
    if probability <= 0:
        return input_ids
    device = generator.device if generator is not None else torch.device("cpu")
    if torch.rand(1, generator=generator, device=device).item() < probability:
        length = int(torch.randint(1, input_ids.shape[1] + 1, (1,), generator=generator, device=device))
        input_ids = input_ids[:, :length]
    return input_ids


def _mask_token_id(model: nn.Module, mask_token_id: int | None) -> int:
    mask_token_id = mask_token_id if mask_token_id is not None else getattr(model.config, "mask_token_id", None)
    if mask_token_id is None:
        raise ValueError("mask_token_id is not set (pass it, or set config.mask_token_id).")
    return mask_token_id


def pretraining_loss(
    model: nn.Module,
    input_ids: torch.LongTensor,
    *,
    mask_token_id: int | None = None,
    eps: float = DEFAULT_EPS,
    random_length_prob: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pre-training ELBO of a batch of fixed-length sequences (one forward): sum(CE / p_mask) / (b * l).

    RNG draws, in order: rand(1) [, randint] for the 1 % length rule (skipped when `random_length_prob` is 0), then
    rand(b), rand(b, l). Works with a peft-wrapped model too.
    """
    input_ids = random_length_crop(input_ids, random_length_prob, generator)
    noisy, labels, p_mask = forward_process(
        input_ids, _mask_token_id(model, mask_token_id), eps=eps, generator=generator
    )
    return diffusion_loss(model(input_ids=noisy).logits, labels, p_mask)


def sft_loss(
    model: nn.Module,
    input_ids: torch.LongTensor,
    prompt_lengths: torch.Tensor | Sequence[int],
    *,
    mask_token_id: int | None = None,
    eps: float = DEFAULT_EPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SFT loss of EOS-padded [prompt | answer] rows: masked answer tokens' CE / p_mask / answer length, then / b.

    The answer length counts everything after the prompt, EOS padding included (the padding is a target: it teaches
    the model where answers end). RNG draws: rand(b), rand(b, l).
    """
    prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device)
    noisy, labels, p_mask = forward_process(
        input_ids, _mask_token_id(model, mask_token_id), eps=eps, generator=generator, prompt_lengths=prompt_lengths
    )
    answer_lengths = (input_ids.shape[1] - prompt_lengths).float()
    return diffusion_loss(model(input_ids=noisy).logits, labels, p_mask, answer_lengths)


def annealed_attention_mask(
    seq_len: int,
    progress: float,
    attention_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Additive (b or 1, 1, l, l) mask between causal (`progress=0`) and full bidirectional attention (`progress>=1`).

    Query i sees keys j <= i + round(progress * (l - 1)): for adapting an autoregressive model, the window above the
    diagonal opens gradually over training. A 2-D padding `attention_mask` (b, l) additionally hides padded keys.
    """
    window = round(min(max(progress, 0.0), 1.0) * (seq_len - 1))
    positions = torch.arange(seq_len, device=device)
    allowed = positions[None, :] <= positions[:, None] + window
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool().to(allowed.device)[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


# ---------------------------------------------------------------------------------------------------------------------
# Data


def _mix64(value: int) -> int:
    """SplitMix64 finaliser: turns (seed, position) into well-spread, reproducible 63-bit generator seeds."""
    mask = (1 << 64) - 1
    z = (value + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def sample_seed(seed: int, position: int) -> int:
    """Generator seed of the sample at global `position` of the stream (used by `DiffusionCollator`)."""
    return _mix64(_mix64(seed) ^ position)


def _special_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if token_id is None or (unk is not None and token_id == unk) else int(token_id)


def encode_example(
    example: dict[str, Any], tokenizer: Any = None, eos_token_id: int | None = None
) -> tuple[list[int], int]:
    """One dataset row -> (token ids, prompt length). Accepted rows, first match wins:

    * `input_ids` (+ optional `prompt_length`): already tokenised;
    * `prompt_ids` + `answer_ids`: token ids (EOS appended to the answer unless it ends with one);
    * `messages` (chat; the last message is the assistant answer) or `prompt` + `answer` strings: the prompt is
      rendered with the tokenizer's chat template (generation prompt included), the answer is tokenised as is and
      followed by `<|eot_id|>` when the tokenizer has it, then EOS;
    * `text`: pre-training text, tokenised, followed by EOS.

    Text is tokenised with `add_special_tokens=False`: the chat template writes BOS itself.
    """
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if "input_ids" in example:
        return list(example["input_ids"]), int(example.get("prompt_length") or 0)
    if "prompt_ids" in example:
        answer = list(example["answer_ids"])
        if eos is not None and (not answer or answer[-1] != eos):
            answer.append(eos)
        return list(example["prompt_ids"]) + answer, len(example["prompt_ids"])
    if tokenizer is None:
        raise ValueError(f"Rows with keys {sorted(example)} need a tokenizer.")

    def tokens(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    if "text" in example and "prompt" not in example and "messages" not in example:
        return tokens(example["text"]) + ([eos] if eos is not None else []), 0
    if "messages" in example:
        messages = list(example["messages"])
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("A `messages` row must end with the assistant answer.")
        history, answer_text = messages[:-1], messages[-1]["content"]
    else:
        history, answer_text = [{"role": "user", "content": example["prompt"]}], example["answer"]
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    else:
        prompt_text = "\n\n".join(message["content"] for message in history)
    prompt = tokens(prompt_text)
    answer = tokens(answer_text.strip())
    eot = _special_id(tokenizer, "<|eot_id|>")
    if eot is not None and eot != eos:
        answer.append(eot)
    if eos is not None:
        answer.append(eos)
    return prompt + answer, len(prompt)


@dataclass
class DiffusionCollator:
    """Tokenises, pads and noises a batch at collation time, so every step draws fresh noise.

    Emits `input_ids` (noisy), `labels` (-100 where not masked), `p_mask` (b, l), `loss_normalizer` (b,) and, for
    padded pre-training rows, `attention_mask`. `mode="sft"`: rows are EOS-padded, prompts never masked, padding is a
    target, n_i = answer length. `mode="pretrain"`: n_i = row length; padding (ragged rows) is neither attended nor a
    target, and with `random_length_prob` a row is cut to a random length (per sample here, not per batch, so that the
    batch composition cannot change a sample's noise).

    The noise of sample j of call c on rank r comes from its own generator seeded with `sample_seed(seed, position)`,
    position = (c * num_processes + r) * batch_size + j: the global position in a stream where ranks take consecutive
    batches (accelerate's sharding). Hence GA 2 x B == one batch of 2B == 2 ranks x B, and resuming only needs `calls`
    (`DiffusionTrainer` sets these fields). Per-row draws: [rand(1) [, randint]] (pre-training with the length rule),
    rand(1) for t, rand(l) for the mask. SFT with ragged batches pads to the batch maximum, which changes the answer
    length n_i with the batch composition; use `pad_to_max_length` for exact GA/DDP equivalence there.
    """

    mask_token_id: int
    pad_token_id: int
    mode: str = "sft"
    tokenizer: Any = None
    eps: float = DEFAULT_EPS
    random_length_prob: float = 0.0
    max_length: int | None = None
    pad_to_max_length: bool = False
    seed: int = 0
    process_index: int = 0
    num_processes: int = 1
    batch_size: int | None = None
    calls: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("sft", "pretrain"):
            raise ValueError(f"mode must be 'sft' or 'pretrain', got {self.mode!r}.")
        if self.pad_token_id == self.mask_token_id:
            raise ValueError("pad_token_id must differ from mask_token_id.")
        if self.pad_to_max_length and self.max_length is None:
            raise ValueError("pad_to_max_length needs max_length.")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [encode_example(example, self.tokenizer, self.pad_token_id) for example in examples]
        if self.max_length is not None:
            rows = [(ids[: self.max_length], min(prompt, self.max_length)) for ids, prompt in rows]
        length = self.max_length if self.pad_to_max_length else max(len(ids) for ids, _ in rows)
        base = (self.calls * self.num_processes + self.process_index) * (self.batch_size or len(rows))
        self.calls += 1

        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        masked = torch.zeros((len(rows), length), dtype=torch.bool)
        p_mask = torch.ones((len(rows), length))
        normalizer = torch.zeros(len(rows))
        positions = torch.arange(length)
        for i, (ids, prompt_length) in enumerate(rows):
            generator = torch.Generator().manual_seed(sample_seed(self.seed, base + i))
            valid = len(ids)
            if self.mode == "pretrain" and self.random_length_prob > 0:
                if torch.rand(1, generator=generator).item() < self.random_length_prob:
                    valid = int(torch.randint(1, valid + 1, (1,), generator=generator))
            t = torch.rand(1, generator=generator)
            p_mask[i] = (1 - self.eps) * t + self.eps
            draw = torch.rand(length, generator=generator) < p_mask[i]
            input_ids[i, :valid] = torch.tensor(ids[:valid], dtype=torch.long)
            if self.mode == "sft":
                attention_mask[i] = 1
                masked[i] = draw & (positions >= prompt_length)
                normalizer[i] = length - prompt_length
            else:
                attention_mask[i, :valid] = 1
                masked[i] = draw & (positions < valid)
                normalizer[i] = valid
        batch = {
            "input_ids": torch.where(masked, self.mask_token_id, input_ids),
            "labels": torch.where(masked, input_ids, IGNORE_INDEX),
            "p_mask": p_mask,
            "loss_normalizer": normalizer,
        }
        if not bool(attention_mask.all()):
            batch["attention_mask"] = attention_mask
        return batch

    def for_evaluation(self, batch_size: int | None = None) -> DiffusionCollator:
        """A copy restarted at call 0 with another seed: each evaluation sees the same noise (comparable losses)."""
        return dataclasses.replace(self, calls=0, seed=self.seed + 1, batch_size=batch_size, random_length_prob=0.0)


def pack_sequences(sequences: Iterable[Sequence[int]], block_size: int) -> list[list[int]]:
    """Concatenate token sequences (documents already end with EOS) and cut them into `block_size` blocks.

    Pre-training uses fixed-length rows; the last, shorter block is kept (the collator pads and hides it).
    """
    flat = [token for sequence in sequences for token in sequence]
    return [flat[start : start + block_size] for start in range(0, len(flat), block_size)]


# ---------------------------------------------------------------------------------------------------------------------
# Trainer


class _CollatorSync(TrainerCallback):
    """Tells the collator its rank and, after a resume, how many batches this rank has already consumed."""

    def __init__(self, trainer: DiffusionTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        collator, ga = self.trainer.data_collator, args.gradient_accumulation_steps
        collator.process_index, collator.num_processes = args.process_index, max(args.world_size, 1)
        collator.batch_size = args.per_device_train_batch_size
        steps_in_epoch = len(train_dataloader) if train_dataloader is not None else None
        if steps_in_epoch:  # batches consumed before `global_step` (the Trainer skips them without collating)
            updates_per_epoch = max(math.ceil(steps_in_epoch / ga), 1)
            epochs, updates = divmod(state.global_step, updates_per_epoch)
            collator.calls = epochs * steps_in_epoch + updates * ga
        else:
            collator.calls = state.global_step * ga


class DiffusionTrainer(Trainer):
    """`Trainer` for masked-diffusion objectives; pass a `DiffusionCollator` as `data_collator`.

    The loss is computed here from the logits (`diffusion_loss`), normalised per batch, so the Trainer divides it by
    the accumulation steps (`loss_is_scaled_for_ga = False`; the model's `accepts_loss_kwargs = False` does the same on
    transformers 5.17). Dataset columns are never removed (the collator needs `prompt`, `prompt_length`, ...).
    Evaluation uses a copy of the collator with fixed noise, so `eval_loss` is comparable across evaluations.
    `attention_anneal_steps > 0` trains with `annealed_attention_mask`, from causal to full over that many steps
    (AR -> diffusion adaptation).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, attention_anneal_steps: int = 0, **kwargs: Any) -> None:
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.ddp_find_unused_parameters is None:
            training_args.ddp_find_unused_parameters = False  # every forward uses every weight: skip DDP's graph scan
        super().__init__(*args, **kwargs)
        if not isinstance(self.data_collator, DiffusionCollator):
            raise TypeError("DiffusionTrainer needs a DiffusionCollator as data_collator.")
        self.attention_anneal_steps = attention_anneal_steps
        self.add_callback(_CollatorSync(self))

    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False, **kwargs):
        if is_training:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, **kwargs)
        train_collator = self.data_collator
        eval_collator = train_collator.for_evaluation(batch_size)
        eval_collator.process_index = self.args.process_index
        eval_collator.num_processes = max(self.args.world_size, 1)
        self.data_collator = eval_collator
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, **kwargs)
        finally:
            self.data_collator = train_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        attention_mask = inputs.get("attention_mask")
        if self.attention_anneal_steps > 0 and model.training:
            progress = self.state.global_step / self.attention_anneal_steps
            if progress < 1:
                ids = inputs["input_ids"]
                dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
                attention_mask = annealed_attention_mask(ids.shape[1], progress, attention_mask, dtype, ids.device)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=attention_mask)
        loss = diffusion_loss(outputs.logits, inputs["labels"], inputs["p_mask"], inputs.get("loss_normalizer"))
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss only: gathering (b, l, vocab) logits for metrics would cost far more than the evaluation itself."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


# ---------------------------------------------------------------------------------------------------------------------
# LoRA


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 reads the deprecated `is_gradient_checkpointing` (transformers 5.23): hide that FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_config(
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | str = DEFAULT_LORA_TARGETS,
    **kwargs: Any,
):
    """peft `LoraConfig` for LLaDA: attention + MLP projections by default (peft has no defaults for "llada").

    `task_type="CAUSAL_LM"` works thanks to the model's pass-through `prepare_inputs_for_generation`, and routes
    `generate()` to the diffusion sampler.
    """
    from peft import LoraConfig

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets, **kwargs)


def get_lora_model(
    model: LLaDAModelLM,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | str = DEFAULT_LORA_TARGETS,
    **kwargs: Any,
):
    """Wrap `model` with LoRA adapters (a `PeftModel`); refuses adapters on the embedding, norms or LM head."""
    from peft import get_peft_model

    with _quiet_peft():
        peft_model = get_peft_model(model, lora_config(r, lora_alpha, lora_dropout, target_modules, **kwargs))
    forbidden = [
        name
        for name, _ in peft_model.named_parameters()
        if "lora_" in name and any(part in name for part in ("embed_tokens", "lm_head", "norm."))
    ]
    if forbidden:
        raise ValueError(f"LoRA must not adapt the embedding, norms or head: {forbidden[:3]}")
    return peft_model


def load_model(
    name_or_path: str, dtype: torch.dtype | str | None = None, load_in_4bit: bool = False, seed: int = 0
) -> LLaDAModelLM:
    """A checkpoint (path or hub id), or a randomly initialised `TINY_CONFIGS` entry by name.

    `load_in_4bit` quantises the frozen base with bitsandbytes (QLoRA); it needs bitsandbytes and a CUDA device.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if name_or_path in TINY_CONFIGS:
        torch.manual_seed(seed)
        model = LLaDAModelLM(LLaDAConfig(**TINY_CONFIGS[name_or_path]))
        return model.to(dtype) if dtype is not None else model
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if load_in_4bit:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("load_in_4bit needs bitsandbytes (pip install bitsandbytes) and a CUDA device.")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype or torch.bfloat16
        )
        return prepare_model_for_kbit_training(LLaDAModelLM.from_pretrained(name_or_path, **kwargs))
    return LLaDAModelLM.from_pretrained(name_or_path, **kwargs)


def save_trained(
    model: nn.Module, output_dir: str | os.PathLike, tokenizer: Any = None, merge_lora: bool = True
) -> nn.Module:
    """Save a trained model so that `load_trained(output_dir)` restores it; returns the (merged) model.

    A peft model's adapter goes to `output_dir/adapter` (small, reloadable onto the base with `load_trained(base,
    adapter=...)`); with `merge_lora` it is also merged in place (`merge_and_unload`) and saved as a full checkpoint
    in `output_dir`. Skip merging for a 4-bit base (merging into quantised weights is lossy).
    """
    output_dir = Path(output_dir)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(output_dir / "adapter")
        if not merge_lora:
            return model
        model = model.merge_and_unload()
    model.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    return model


def load_trained(path: str | os.PathLike, adapter: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Load what `save_trained` wrote; with `adapter`, the LoRA adapter is put on top of `path` (a `PeftModel`)."""
    model = LLaDAModelLM.from_pretrained(path, **kwargs)
    if adapter is None:
        return model
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(model, adapter)


# ---------------------------------------------------------------------------------------------------------------------
# Autoregressive -> diffusion adaptation


def convert_llama_to_llada(
    llama_model_or_path: Any, mask_token_id: int | None = None, tokenizer: Any = None
) -> LLaDAModelLM:
    """Turn a `LlamaForCausalLM` (MHA or GQA) into a `LLaDAModelLM` with the same weights, bidirectional attention.

    Llama's RoPE base, RMSNorm eps, head layout and tied/untied head carry over, so with a causal 4-D
    `attention_mask` the result reproduces the Llama logits. Without `mask_token_id`, a mask token is added: to
    `tokenizer` as `<|mdm_mask|>` when given (reusing a spare embedding row if the tokenizer is shorter than the
    vocabulary), else as a new last row; new embedding and head rows are the mean of the existing ones.
    """
    from transformers import AutoModelForCausalLM

    llama = llama_model_or_path
    if isinstance(llama, (str, os.PathLike)):
        llama = AutoModelForCausalLM.from_pretrained(llama)
    cfg = llama.config
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    problems = {
        "model_type": (cfg.model_type, "llama"),
        "rope_type": (rope.get("rope_type", "default"), "default"),
        "hidden_act": (cfg.hidden_act, "silu"),
        "attention_bias": (getattr(cfg, "attention_bias", False), False),
        "mlp_bias": (getattr(cfg, "mlp_bias", False), False),
        "head_dim": (head_dim, cfg.hidden_size // cfg.num_attention_heads),
    }
    bad = {key: got for key, (got, want) in problems.items() if got != want}
    if bad:
        raise ValueError(f"convert_llama_to_llada: unsupported Llama settings {bad}.")

    state = {key: value for key, value in llama.state_dict().items() if "rotary_emb" not in key}
    vocab = cfg.vocab_size
    if mask_token_id is None:
        if tokenizer is not None:
            tokenizer.add_special_tokens({"mask_token": "<|mdm_mask|>"})
            mask_token_id = tokenizer.mask_token_id
        else:
            mask_token_id = vocab
    if mask_token_id >= vocab:
        new_vocab = mask_token_id + 1
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in state:
                weight = state[key]
                extra = weight.float().mean(0, keepdim=True).expand(new_vocab - vocab, -1).to(weight.dtype)
                state[key] = torch.cat([weight, extra])
        vocab = new_vocab
    eos = cfg.eos_token_id
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    config = LLaDAConfig(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=float(rope_theta),
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        mask_token_id=mask_token_id,
        pad_token_id=pad,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=eos,
    )
    model = LLaDAModelLM(config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if key != "lm_head.weight"]
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"Weight mismatch converting Llama: missing {missing}, unexpected {unexpected}.")
    return model.to(llama.dtype).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Command line


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="tiny",
        metadata={"help": f"Checkpoint path/hub id, or a config name to train from scratch: {list(TINY_CONFIGS)}"},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the model path; the tiny offline tokenizer for configs)"}
    )
    dtype: str | None = field(default=None, metadata={"help": "float32, bfloat16, ... (default: the checkpoint's)"})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights"})
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str = field(default=",".join(DEFAULT_LORA_TARGETS), metadata={"help": "Comma-separated"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: 4-bit base (needs bitsandbytes + CUDA)"})


@dataclass
class DataArguments:
    train_file: str = field(
        default=None,
        metadata={"help": "jsonl rows: {prompt, answer}, {messages}, {prompt_ids, answer_ids}, {text} or {input_ids}"},
    )
    mode: str = field(default="sft", metadata={"help": "sft or pretrain", "choices": ["sft", "pretrain"]})
    eval_file: str | None = field(default=None, metadata={"help": "jsonl for eval_loss (same row format)"})
    eval_size: int = field(default=0, metadata={"help": "Rows held out of train_file for evaluation"})
    max_length: int = field(default=512, metadata={"help": "Truncation length; pre-training block size"})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every row to max_length"})
    eps: float = DEFAULT_EPS
    random_length_prob: float = field(default=0.01, metadata={"help": "Pre-training: share of rows cut short"})
    attention_anneal_steps: int = field(default=0, metadata={"help": "Causal -> full attention over N steps"})


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _load_tokenizer(model_args: ModelArguments) -> Any:
    from transformers import AutoTokenizer

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name in TINY_CONFIGS:
        try:
            from .tokenizer import build_tiny_tokenizer
        except ImportError:
            return None
        return build_tiny_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError):
        return None


def train_main(argv: list[str] | None = None) -> int:
    """`llada-hf train`: masked-diffusion pre-training or SFT, full or LoRA, with `Trainer` (logging, eval, resume).

    Any `TrainingArguments` flag works (`--output_dir`, `--max_steps`, `--learning_rate`, `--eval_strategy steps
    --eval_steps N`, `--resume_from_checkpoint`, ...). Saves the final model (merged, plus `adapter/` for LoRA) and
    the tokenizer to `output_dir`.
    """
    from datasets import Dataset

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), prog="llada-hf train")
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if data_args.train_file is None:
        parser.error("--train_file is required")

    tokenizer = _load_tokenizer(model_args)
    model = load_model(model_args.model_name_or_path, model_args.dtype, model_args.load_in_4bit, training_args.seed)
    config = model.config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id

    rows = _read_jsonl(data_args.train_file)
    eval_rows = _read_jsonl(data_args.eval_file) if data_args.eval_file else []
    if data_args.eval_size:
        rows, eval_rows = rows[data_args.eval_size :], eval_rows + rows[: data_args.eval_size]
    if data_args.mode == "pretrain":  # tokenise, concatenate, cut into fixed-length blocks

        def blocks(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            sequences = [encode_example(item, tokenizer, pad)[0] for item in items]
            return [{"input_ids": block} for block in pack_sequences(sequences, data_args.max_length)]

        rows, eval_rows = blocks(rows), blocks(eval_rows)

    collator = DiffusionCollator(
        mask_token_id=config.mask_token_id,
        pad_token_id=pad,
        mode=data_args.mode,
        tokenizer=tokenizer,
        eps=data_args.eps,
        random_length_prob=data_args.random_length_prob if data_args.mode == "pretrain" else 0.0,
        max_length=data_args.max_length,
        pad_to_max_length=data_args.pad_to_max_length,
        seed=training_args.seed,
    )
    if model_args.use_lora:
        targets = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
        target: list[str] | str = targets[0] if targets == ["all-linear"] else targets
        model = get_lora_model(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, target)
    trainer = DiffusionTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        data_collator=collator,
        processing_class=tokenizer,
        attention_anneal_steps=data_args.attention_anneal_steps,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", result.metrics)
    if eval_rows:
        trainer.log_metrics("eval", trainer.evaluate())
    if trainer.is_world_process_zero():
        save_trained(trainer.model, training_args.output_dir, tokenizer, merge_lora=not model_args.load_in_4bit)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "TINY_CONFIGS",
    "DataArguments",
    "DiffusionCollator",
    "DiffusionTrainer",
    "ModelArguments",
    "annealed_attention_mask",
    "convert_llama_to_llada",
    "diffusion_loss",
    "encode_example",
    "forward_process",
    "get_lora_model",
    "load_model",
    "load_trained",
    "lora_config",
    "pack_sequences",
    "pretraining_loss",
    "random_length_crop",
    "sample_seed",
    "save_trained",
    "sft_loss",
    "train_main",
]


if __name__ == "__main__":
    code = train_main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # torch 2.13 CPU DDP runs sometimes abort in interpreter shutdown (SIGABRT)
    raise SystemExit(code)
