"""Masked-diffusion training for LLaDA: losses, data preparation, a `Trainer`, LoRA, AR->diffusion conversion, CLI.

The objectives follow the LLaDA paper (arXiv 2502.09992) and its GUIDELINES:

* pre-training: t ~ U(0, 1) per sequence, p_mask = (1 - eps) t + eps, every token masked with probability p_mask; the
  loss is sum over masked tokens of CE / p_mask, divided by b * l (all positions). Optionally (the paper: 1 % of the
  data) the batch is cut to a random length U{1..l} first (draw order: rand(1) [, randint], rand(b), rand(b, l)).
* SFT: the same forward process on [prompt | answer], the prompt never masked; answers are padded with EOS and the
  padding is a target; each masked token's CE / p_mask is divided by its sample's answer length (padding included),
  and the sum by the batch size.

Both are the same formula, (1/b) sum_i (1/n_i) sum_{j masked} CE_ij / p_ij with n_i the row's length (pre-training)
or answer length (SFT): `diffusion_loss`; `forward_process` is the noising. `pretraining_loss` / `sft_loss` draw the
noise from one generator in the official order. In the `Trainer` path, rows are validated and tokenised once
(`prepare_dataset`, `Dataset.map`), `DiffusionCollator` only pads, and `DiffusionTrainer.compute_loss` noises the
batch and computes the loss, once, drawing each row's noise from a generator seeded by (seed, the row's index in the
dataset, the epoch): the noise cannot depend on DataLoader workers, gradient accumulation, DDP ranks or resuming.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from .hub import load_hub_config
from .loading import resolve_mask_token_id
from .modeling import LLaDAConfig, LLaDAModelLM, masked_diffusion_loss
from .modeling.modeling_llada import check_token_reweighting

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_EPS = 1e-3
# The paper's variable-length rule for pre-training (1 % of the data). Opt-in in the library (`pretraining_loss`,
# `DiffusionCollator` default to 0), the default of `llada-hf train --mode pretrain`.
PAPER_RANDOM_LENGTH_PROB = 0.01
# Column holding each row's index in its dataset: the key of the row's noise (see `sample_seed`).
INDEX_COLUMN = "sample_index"
EVAL_EPOCH = -1  # the "epoch" of evaluation noise: every evaluation sees the same masks
# Attention + MLP projections (native names). Never the embedding, the norms or the head.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Small configs to train from scratch by name (smoke tests, toy tasks): the `llada_hf/<name>` hub configs, whose
# special ids are the tiny tokenizer's.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    name: {
        key: getattr(load_hub_config(f"llada_hf/{name}"), key)
        for key in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
        )
    }
    for name in ("tiny", "small")
}  # fmt: skip


class DataError(ValueError):
    """Bad training data or data settings, detected before training starts (the message says where and what)."""


# ---------------------------------------------------------------------------------------------------------------------
# Forward process and losses


def forward_process(
    input_ids: torch.LongTensor,
    mask_token_id: int,
    *,
    eps: float = DEFAULT_EPS,
    generator: torch.Generator | None = None,
    prompt_lengths: torch.Tensor | Sequence[int] | None = None,
    maskable: torch.Tensor | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor, torch.Tensor]:
    """Mask each token with probability p_mask = (1 - eps) t + eps, t ~ U(0, 1) per row; prompts are never masked.

    Draws `rand(b)` then `rand(b, l)` from `generator` (on the generator's device). Only positions at or after
    `prompt_lengths` and, if given, where the boolean `maskable` (b, l) is true can be masked. Returns `(noisy_ids,
    labels, p_mask)`: labels hold the original id where masked and -100 elsewhere; p_mask is (b, l), fp32.
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
    if maskable is not None:
        masked &= maskable.to(device=input_ids.device, dtype=torch.bool)
    noisy = torch.where(masked, mask_token_id, input_ids)
    labels = torch.where(masked, input_ids, IGNORE_INDEX)
    return noisy, labels, p_mask.contiguous()


# The one masked-diffusion loss (also the models' `labels=`/`p_mask=` loss and the likelihood's sum), under the name
# this module has always used.
diffusion_loss = masked_diffusion_loss


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


def pretraining_loss(
    model: nn.Module,
    input_ids: torch.LongTensor,
    *,
    attention_mask: torch.Tensor | None = None,
    mask_token_id: int | None = None,
    eps: float = DEFAULT_EPS,
    random_length_prob: float = 0.0,
    generator: torch.Generator | None = None,
    reweight_gamma: float = 0.0,
    reweight_alpha: float = 1.0,
) -> torch.Tensor:
    """Pre-training ELBO of a batch (one forward): sum(CE / p_mask) / (b * l).

    With a padding `attention_mask` (b, l), padded positions are neither attended, masked nor targets, and row i is
    normalised by its own length (the sum of its mask): (1/b) sum_i sum(CE / p_mask) / l_i. `random_length_prob`
    (default 0, as `DiffusionCollator`; the paper uses `PAPER_RANDOM_LENGTH_PROB`) cuts the batch to a random length
    first. RNG draws, in order: rand(1) [, randint] for that rule (skipped when the probability is 0), then rand(b),
    rand(b, l). Works with a peft-wrapped model too. `reweight_gamma` / `reweight_alpha`: token-level reweighting
    (`diffusion_loss`).
    """
    input_ids = random_length_crop(input_ids, random_length_prob, generator)
    maskable = normalizer = None
    if attention_mask is not None:
        attention_mask = attention_mask[:, : input_ids.shape[1]]
        maskable = attention_mask.bool()
        normalizer = maskable.sum(-1)
    noisy, labels, p_mask = forward_process(
        input_ids, resolve_mask_token_id(model, mask_token_id), eps=eps, generator=generator, maskable=maskable
    )
    logits = model(input_ids=noisy, attention_mask=attention_mask).logits
    return diffusion_loss(
        logits, labels, p_mask, normalizer, reweight_gamma=reweight_gamma, reweight_alpha=reweight_alpha
    )


def sft_loss(
    model: nn.Module,
    input_ids: torch.LongTensor,
    prompt_lengths: torch.Tensor | Sequence[int],
    *,
    mask_token_id: int | None = None,
    eps: float = DEFAULT_EPS,
    generator: torch.Generator | None = None,
    reweight_gamma: float = 0.0,
    reweight_alpha: float = 1.0,
) -> torch.Tensor:
    """SFT loss of EOS-padded [prompt | answer] rows: masked answer tokens' CE / p_mask / answer length, then / b.

    The answer length counts everything after the prompt, EOS padding included (the padding is a target: it teaches
    the model where answers end). RNG draws: rand(b), rand(b, l). `reweight_gamma` / `reweight_alpha`: token-level
    reweighting (`diffusion_loss`).
    """
    prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device)
    noisy, labels, p_mask = forward_process(
        input_ids,
        resolve_mask_token_id(model, mask_token_id),
        eps=eps,
        generator=generator,
        prompt_lengths=prompt_lengths,
    )
    answer_lengths = (input_ids.shape[1] - prompt_lengths).float()
    logits = model(input_ids=noisy).logits
    return diffusion_loss(
        logits, labels, p_mask, answer_lengths, reweight_gamma=reweight_gamma, reweight_alpha=reweight_alpha
    )


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


def _mix64(value: int) -> int:
    """SplitMix64 finaliser: turns (seed, index, epoch) into well-spread, reproducible 63-bit generator seeds."""
    mask = (1 << 64) - 1
    z = (value + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def sample_seed(seed: int, index: int, epoch: int = 0) -> int:
    """Generator seed of the noise of dataset row `index` in `epoch` (`EVAL_EPOCH` for evaluation)."""
    return _mix64(_mix64(_mix64(seed) ^ (epoch & ((1 << 64) - 1))) ^ index)


def mask_batch(
    input_ids: torch.LongTensor,
    labels: torch.LongTensor,
    mask_token_id: int,
    seeds: Sequence[int],
    *,
    attention_mask: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    random_length_prob: float = 0.0,
) -> dict[str, torch.Tensor | None]:
    """Noise a padded batch (from `DiffusionCollator`), row i from its own CPU generator seeded with `seeds[i]`.

    `labels` holds the clean targets (-100 where a position can never be masked: prompts, hidden padding). Per row,
    the generator draws [rand(1) [, randint]] for the variable-length rule (when `random_length_prob` > 0: the row's
    attended part is cut to randint(1, n + 1) tokens, the rest hidden), then `forward_process`'s rand(1) for t and
    rand(l) for the mask. Returns `input_ids` (noisy), `labels` (-100 where not masked), `p_mask`, `loss_normalizer`
    (n_i = positions that could be masked: answer + EOS padding for SFT, the row length for pre-training) and
    `attention_mask` (None when every position is attended), all on `input_ids`' device.
    """
    seeds = list(seeds)
    if len(seeds) != input_ids.shape[0]:
        raise ValueError(f"mask_batch needs one seed per row: {len(seeds)} seeds for {input_ids.shape[0]} rows.")
    device = input_ids.device
    ids, targets = input_ids.cpu(), labels.cpu()
    attended = attention_mask.cpu().bool() if attention_mask is not None else torch.ones(ids.shape, dtype=torch.bool)
    maskable = targets != IGNORE_INDEX
    noisy, masked_labels, p_mask = [], [], []
    for i, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(int(seed))
        if random_length_prob > 0:
            valid = int(attended[i].sum())
            kept = random_length_crop(ids[i : i + 1, :valid], random_length_prob, generator).shape[1]
            attended[i, kept:] = False
            maskable[i, kept:] = False
        row = forward_process(
            ids[i : i + 1], mask_token_id, eps=eps, generator=generator, maskable=maskable[i : i + 1]
        )
        for out, value in zip((noisy, masked_labels, p_mask), row):
            out.append(value)
    return {
        "input_ids": torch.cat(noisy).to(device),
        "labels": torch.cat(masked_labels).to(device),
        "p_mask": torch.cat(p_mask).to(device),
        "loss_normalizer": maskable.sum(-1).float().to(device),
        "attention_mask": None if bool(attended.all()) else attended.long().to(device),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Data

ROW_FORMATS = (
    "{input_ids[, prompt_length]}, {prompt_ids, answer_ids}, {messages}, {prompt, completion} (TRL: strings, or "
    "message lists), {prompt, answer} or {text}"
)


def _special_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if token_id is None or (unk is not None and token_id == unk) else int(token_id)


def _present(example: dict[str, Any], name: str) -> bool:
    return example.get(name) is not None  # `datasets` fills a field missing from some rows with None


def _string(example: dict[str, Any], name: str) -> str:
    value = example.get(name)
    if value is None:
        raise DataError(f"missing field {name!r}")
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _token_ids(example: dict[str, Any], name: str) -> list[int]:
    value = example.get(name)
    if value is None:
        raise DataError(f"missing field {name!r}")
    if isinstance(value, (str, bytes)) or not all(isinstance(token, int) and token >= 0 for token in value):
        raise DataError(f"field {name!r} must be a list of non-negative token ids")
    return list(value)


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"field {name!r} must be a non-empty list of {{role, content}} messages")
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DataError(f"field {name!r}: every message needs a 'role' and a 'content'")
        if not isinstance(message.get("content"), str):
            raise DataError(f"field {name!r}: message content must be a string")
    return list(value)


def encode_example(
    example: dict[str, Any], tokenizer: Any = None, eos_token_id: int | None = None
) -> tuple[list[int], int]:
    """One dataset row -> (token ids, prompt length); raises `DataError` naming the missing or malformed field.

    Accepted rows, first match wins:

    * `input_ids` (+ optional `prompt_length`): already tokenised;
    * `prompt_ids` + `answer_ids`: token ids (EOS appended to the answer unless it ends with one);
    * `messages` (chat; the last message is the assistant answer), `prompt` + `answer` strings, or TRL's
      conversational `prompt` + `completion` (message lists; the completion is one assistant message): the prompt is
      rendered with the tokenizer's chat template (generation prompt included), the answer is tokenised as is and
      followed by `<|eot_id|>` when the tokenizer has it, then EOS;
    * TRL's standard `prompt` + `completion` strings: plain text, no template; EOS after the completion;
    * `text`: pre-training text (TRL's language-modelling rows), tokenised, followed by EOS.

    Text is tokenised with `add_special_tokens=False` (the chat template writes BOS itself).
    """
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if _present(example, "input_ids"):
        ids = _token_ids(example, "input_ids")
        prompt_length = example.get("prompt_length") or 0
        if not ids or not isinstance(prompt_length, int) or not 0 <= prompt_length < len(ids):
            raise DataError("'input_ids' must be non-empty and 'prompt_length' in [0, len(input_ids))")
        return ids, prompt_length
    if _present(example, "prompt_ids") or _present(example, "answer_ids"):
        prompt, answer = _token_ids(example, "prompt_ids"), _token_ids(example, "answer_ids")
        if eos is not None and (not answer or answer[-1] != eos):
            answer.append(eos)
        if not answer:
            raise DataError("field 'answer_ids' is empty")
        return prompt + answer, len(prompt)
    chat_fields = ("messages", "prompt", "completion", "answer", "text")
    if not any(_present(example, name) for name in chat_fields):
        raise DataError(f"no recognised fields (has {sorted(example)}); expected {ROW_FORMATS}")
    if tokenizer is None:
        raise DataError(f"rows with {[n for n in chat_fields if _present(example, n)]} need a tokenizer")

    def tokens(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    eos_ids = [eos] if eos is not None else []
    if _present(example, "messages"):
        messages = _messages(example["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError("field 'messages' must end with the assistant answer")
        history, answer_text = messages[:-1], messages[-1]["content"]
    elif any(_present(example, name) for name in ("prompt", "completion", "answer")):
        if not _present(example, "prompt"):
            raise DataError("missing field 'prompt'")
        if _present(example, "completion"):
            if isinstance(example["prompt"], str):  # TRL standard prompt-completion: plain text
                prompt_ids = tokens(example["prompt"])
                return prompt_ids + tokens(_string(example, "completion")) + eos_ids, len(prompt_ids)
            history, answer = _messages(example["prompt"], "prompt"), _messages(example["completion"], "completion")
            if len(answer) != 1 or answer[0]["role"] != "assistant":
                raise DataError("field 'completion' must be one assistant message (or prompt and completion strings)")
            answer_text = answer[0]["content"]
        elif _present(example, "answer"):
            history, answer_text = (
                [{"role": "user", "content": _string(example, "prompt")}],
                _string(example, "answer"),
            )
        else:
            raise DataError("missing field 'completion' (or 'answer')")
    else:
        return tokens(_string(example, "text")) + eos_ids, 0
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    else:
        prompt_text = "\n\n".join(message["content"] for message in history)
    prompt_ids = tokens(prompt_text)
    answer_ids = tokens(answer_text.strip())
    eot = _special_id(tokenizer, "<|eot_id|>")
    if eot is not None and eot != eos:
        answer_ids.append(eot)
    return prompt_ids + answer_ids + eos_ids, len(prompt_ids)


def pack_sequences(sequences: Iterable[Sequence[int]], block_size: int) -> list[list[int]]:
    """Concatenate token sequences (documents already end with EOS) and cut them into `block_size` blocks.

    Pre-training uses fixed-length rows; the last, shorter block is kept (the collator pads and hides it).
    """
    flat = [token for sequence in sequences for token in sequence]
    return [flat[start : start + block_size] for start in range(0, len(flat), block_size)]


@dataclass
class DataReport:
    """What `prepare_dataset` did to a split: rows read, cut or dropped by `max_length`, rows (or blocks) kept."""

    name: str
    rows: int
    kept: int
    cut: int = 0
    dropped: int = 0
    max_length: int | None = None
    packed: bool = False
    source: str | None = None
    examples: list[str] = field(default_factory=list)  # where the first cut/dropped rows are

    def summary(self) -> str:
        text = f"{self.name}: {self.rows} rows" + (f" from {self.source}" if self.source else "")
        if self.packed:
            text += f", packed into {self.kept} blocks of {self.max_length} tokens"
        if self.cut:
            text += f"; {self.cut} longer than max_length {self.max_length} were cut"
        if self.dropped:
            text += f"; {self.dropped} dropped (prompt of max_length {self.max_length} tokens or more: no answer left)"
        if self.examples:
            text += f" (e.g. {', '.join(self.examples)})"
        return text


def _row_locator(label: str, jsonl_path: str | None = None) -> Callable[[int], str]:
    """Row index -> "file line N" for JSON-lines files (blank lines skipped, as in `datasets`), else "label row i"."""
    lines: list[int] = []

    def locate(index: int) -> str:
        if jsonl_path is not None:
            if not lines:
                with open(jsonl_path, encoding="utf-8") as handle:
                    lines.extend(number for number, line in enumerate(handle, 1) if line.strip())
            if index < len(lines):
                return f"{jsonl_path} line {lines[index]}"
        return f"{label} row {index}"

    return locate


def prepare_dataset(
    dataset: Any,
    tokenizer: Any = None,
    *,
    mode: str = "sft",
    max_length: int | None = None,
    packing: bool = False,
    eos_token_id: int | None = None,
    name: str = "train",
    locate: Callable[[int], str] | None = None,
    source: str | None = None,
) -> tuple[Any, DataReport]:
    """Validate and tokenise every row once (`Dataset.map`), apply `max_length`, index the rows; before training.

    Returns `(dataset, report)`: columns `input_ids`, `prompt_length` and `INDEX_COLUMN` (the row's position, the key
    of its noise). Invalid rows raise `DataError` naming each row's place (`locate(i)`: a file line, else "row i")
    and the field. SFT rows longer than `max_length` are cut (answer truncated) or, when the prompt alone fills
    `max_length`, dropped; both are counted in the report (and logged). Pre-training rows are cut, or with `packing`
    concatenated and split into `max_length` blocks (nothing lost). A split with nothing trainable left is refused.
    """
    from datasets import Dataset, Features, Sequence, Value

    if isinstance(dataset, list):  # every key of every row (`Dataset.from_list` keeps the first row's keys only)
        keys = list(dict.fromkeys(key for row in dataset for key in row))
        dataset = Dataset.from_list([{key: row.get(key) for key in keys} for row in dataset])
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{name} data must be a datasets.Dataset (map-style) or a list of rows, got {type(dataset)}")
    if mode not in ("sft", "pretrain"):
        raise DataError(f"mode must be 'sft' or 'pretrain', got {mode!r}")
    if max_length is not None and max_length < 1:
        raise DataError(f"max_length must be at least 1, got {max_length}")
    if packing and (mode != "pretrain" or max_length is None):
        raise DataError("packing is for pre-training and needs max_length")
    where = source or name
    if len(dataset) == 0:
        raise DataError(f"{where}: no rows")
    locate = locate or _row_locator(where)

    def encode(example: dict[str, Any]) -> dict[str, Any]:
        try:
            ids, prompt_length = encode_example(example, tokenizer, eos_token_id)
        except DataError as error:
            return {"input_ids": [], "prompt_length": 0, "status": 0, "error": str(error)}
        status = 0  # 1: cut to max_length, 2: dropped (SFT prompt fills max_length)
        if max_length is not None and len(ids) > max_length and not packing:
            status = 2 if mode == "sft" and prompt_length >= max_length else 1
            ids = ids[:max_length]
        return {"input_ids": ids, "prompt_length": prompt_length, "status": status, "error": ""}

    features = Features(
        {"input_ids": Sequence(Value("int64")), "prompt_length": Value("int64"), "status": Value("int8"),
         "error": Value("string")}
    )  # fmt: skip
    encoded = dataset.map(encode, remove_columns=dataset.column_names, features=features, desc=f"Tokenising {name}")
    errors = [(index, error) for index, error in enumerate(encoded["error"]) if error]
    if errors:
        shown = "; ".join(f"{locate(index)}: {error}" for index, error in errors[:3])
        more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
        raise DataError(f"{where}: {len(errors)} invalid row(s) of {len(encoded)}: {shown}{more}")
    statuses = list(encoded["status"])
    report = DataReport(
        name, len(encoded), 0, statuses.count(1), statuses.count(2), max_length, packing, source,
        [f"{locate(i)} {'dropped' if s == 2 else 'cut'}" for i, s in enumerate(statuses) if s][:3],
    )  # fmt: skip
    if report.dropped:
        encoded = encoded.filter(lambda status: status != 2, input_columns="status")
    encoded = encoded.remove_columns(["status", "error"])
    if not len(encoded):
        raise DataError(
            f"{where}: nothing to train on: all {report.rows} rows have a prompt of max_length {max_length} tokens or "
            "more (raise max_length)"
        )
    if packing:

        def blocks(batch: dict[str, list]) -> dict[str, list]:
            packed = pack_sequences(batch["input_ids"], max_length)
            return {"input_ids": packed, "prompt_length": [0] * len(packed)}

        encoded = encoded.map(blocks, batched=True, remove_columns=encoded.column_names, desc=f"Packing {name}")
    report.kept = len(encoded)
    if report.cut or report.dropped:
        logger.warning(report.summary())
    encoded = encoded.add_column(INDEX_COLUMN, list(range(len(encoded))))
    return encoded, report


_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _first_json_error(path: str) -> str | None:
    """The first line of a JSON-lines file that is not a JSON object, with its real line number."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                return f"{path} line {number}: invalid JSON ({error.msg}, column {error.colno})"
            if not isinstance(row, dict):
                return f"{path} line {number}: not a JSON object"
    return None


def load_rows(
    path: str | None = None,
    *,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    data_files: Any = None,
    split: str = "train",
    cache_dir: str | None = None,
) -> tuple[Any, Callable[[int], str], str]:
    """Rows of a local file (`.json`/`.jsonl`/`.csv`/`.parquet`/`.txt`) or of any `load_dataset` source.

    Returns `(dataset, locate, label)`: `locate(i)` names row i's place for error messages (the file's line for
    JSON lines). Missing or empty files and malformed JSON lines raise `DataError` with the file and line.
    """
    from datasets import load_dataset

    jsonl = None
    if path is not None:
        suffix = Path(path).suffix.lower()
        if suffix not in _BUILDERS:
            raise DataError(f"{path}: unknown data file type {suffix!r} (use {', '.join(_BUILDERS)})")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        builder, data_files, label = _BUILDERS[suffix], path, path
    else:
        builder, label = dataset_name, f"{dataset_name}[{split}]"
    files = [data_files] if isinstance(data_files, str) else list(data_files or [])
    if builder == "json" and len(files) == 1 and os.path.isfile(files[0]):
        with open(files[0], encoding="utf-8") as handle:
            first = next((line.strip() for line in handle if line.strip()), None)
        if first is None:
            raise DataError(f"{files[0]}: no rows (empty file)")
        jsonl = files[0] if not first.startswith("[") else None  # JSON lines (not one JSON array): name lines
    try:
        dataset = load_dataset(builder, dataset_config, data_files=data_files, split=split, cache_dir=cache_dir)
    except Exception as error:
        bad = _first_json_error(jsonl) if jsonl is not None else None
        raise DataError(bad or f"{label}: could not load the data: {type(error).__name__}: {error}") from error
    if len(dataset) == 0:
        raise DataError(f"{label}: no rows")
    return dataset, _row_locator(label, jsonl), label


@dataclass
class DiffusionCollator:
    """Pads a batch of tokenised rows; deterministic (no noise), so DataLoader workers cannot change anything.

    Emits clean `input_ids`, `labels` (the token where a position may be masked, else -100), `attention_mask` (only
    when some padding is hidden) and `sample_index` (each row's index, the key of its noise). `mode="sft"`: rows are
    EOS-padded (to the longest row, or `max_length` with `pad_to_max_length`), the prompt can never be masked, the
    padding is attended and a target. `mode="pretrain"`: padding is neither attended nor a target. The noise settings
    (`eps`, `random_length_prob` for pre-training, `seed`: default `TrainingArguments.seed`) are read by
    `DiffusionTrainer`, which noises each batch in `compute_loss` (`mask_batch`). Rows that are not tokenised yet
    are encoded here (`encode_example`, needs `tokenizer` for text); `DiffusionTrainer` tokenises its datasets once
    beforehand. SFT batches padded to the batch maximum make n_i (answer + padding) depend on the batch composition:
    use `pad_to_max_length` when GA/DDP must equal the big batch exactly.
    """

    mask_token_id: int
    pad_token_id: int
    mode: str = "sft"
    tokenizer: Any = None
    eps: float = DEFAULT_EPS
    random_length_prob: float = 0.0
    max_length: int | None = None
    pad_to_max_length: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("sft", "pretrain"):
            raise ValueError(f"mode must be 'sft' or 'pretrain', got {self.mode!r}.")
        if self.pad_token_id == self.mask_token_id:
            raise ValueError("pad_token_id must differ from mask_token_id.")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {self.max_length}.")
        if self.pad_to_max_length and self.max_length is None:
            raise ValueError("pad_to_max_length needs max_length.")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [
            (list(ex["input_ids"]), int(ex.get("prompt_length") or 0))
            if "input_ids" in ex
            else encode_example(ex, self.tokenizer, self.pad_token_id)
            for ex in examples
        ]
        if self.max_length is not None:
            rows = [(ids[: self.max_length], min(prompt, self.max_length)) for ids, prompt in rows]
        length = self.max_length if self.pad_to_max_length else max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.ones((len(rows), length), dtype=torch.long)
        positions = torch.arange(length)
        maskable = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, (ids, prompt_length) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if self.mode == "sft":
                maskable[i] = positions >= prompt_length
            else:
                attention_mask[i, len(ids) :] = 0
                maskable[i] = positions < len(ids)
        batch = {"input_ids": input_ids, "labels": torch.where(maskable, input_ids, IGNORE_INDEX)}
        if not bool(attention_mask.all()):
            batch["attention_mask"] = attention_mask
        if all(INDEX_COLUMN in ex for ex in examples):
            batch[INDEX_COLUMN] = torch.tensor([int(ex[INDEX_COLUMN]) for ex in examples], dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# Trainer


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
        attention_anneal_steps: int = 0,
        reweight_gamma: float = 0.0,
        reweight_alpha: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_token_reweighting(reweight_gamma, reweight_alpha)
        if not isinstance(data_collator, DiffusionCollator):
            raise TypeError("DiffusionTrainer needs a DiffusionCollator as data_collator.")
        args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        args.remove_unused_columns = False  # the collator needs `prompt_length` and `sample_index`
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = False  # every forward uses every weight: skip DDP's graph scan
        self.data_reports: dict[str, DataReport] = {}
        tokenizer = processing_class if processing_class is not None else data_collator.tokenizer

        def prepare(dataset: Any, name: str) -> Any:  # validate and tokenise once, unless already prepared
            if dataset is None or INDEX_COLUMN in (getattr(dataset, "column_names", None) or []):
                return dataset
            dataset, self.data_reports[name] = prepare_dataset(
                dataset, tokenizer, mode=data_collator.mode, max_length=data_collator.max_length,
                eos_token_id=data_collator.pad_token_id, name=name,
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
        self.attention_anneal_steps = attention_anneal_steps
        self.reweight_gamma, self.reweight_alpha = reweight_gamma, reweight_alpha
        self.noise_epoch = 0
        self.add_callback(_NoiseEpoch(self))

    @property
    def noise_seed(self) -> int:
        seed = self.data_collator.seed
        return self.args.seed if seed is None else seed

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Noise the batch (each row from its own seeded generator), one forward, `diffusion_loss`."""
        collator = self.data_collator
        if INDEX_COLUMN not in inputs:
            raise KeyError(f"batches need {INDEX_COLUMN!r} (rows of a dataset prepared by `prepare_dataset`).")
        epoch = self.noise_epoch if model.training else EVAL_EPOCH
        seeds = [sample_seed(self.noise_seed, index, epoch) for index in inputs[INDEX_COLUMN].tolist()]
        length_rule = collator.random_length_prob if collator.mode == "pretrain" and model.training else 0.0
        noised = mask_batch(
            inputs["input_ids"], inputs["labels"], collator.mask_token_id, seeds,
            attention_mask=inputs.get("attention_mask"), eps=collator.eps, random_length_prob=length_rule,
        )  # fmt: skip
        attention_mask = noised["attention_mask"]
        if self.attention_anneal_steps > 0 and model.training:
            progress = self.state.global_step / self.attention_anneal_steps
            if progress < 1:
                ids = noised["input_ids"]
                dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
                attention_mask = annealed_attention_mask(ids.shape[1], progress, attention_mask, dtype, ids.device)
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

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The Trainer's card (hyper-parameters, evaluation results) with the objective and the data filled in."""
        tags = kwargs.get("tags") or []
        kwargs["tags"] = list(
            dict.fromkeys([*([tags] if isinstance(tags, str) else tags), "llada", "masked-diffusion"])
        )
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return
        collator, path = self.data_collator, Path(self.args.output_dir) / "README.md"
        objective = (
            "SFT: the prompt is never masked, answers are EOS-padded and the padding is a target; each masked answer "
            "token's cross-entropy / p_mask is divided by the answer length, the sum by the batch size"
            if collator.mode == "sft"
            else "pre-training ELBO: every token can be masked; the sum of cross-entropy / p_mask over masked tokens "
            f"is divided by the row length and the batch size; variable-length rule {collator.random_length_prob}"
        )
        description = (
            f"A LLaDA masked-diffusion language model trained with `llada_hf` ({self.model.__class__.__name__}). "
            f"Objective: {objective}. p_mask = (1 - eps) t + eps with t ~ U(0, 1) per row, eps = {collator.eps}; "
            f"max_length {collator.max_length}; noise seed {self.noise_seed}"
            + (
                f"; token-level reweighting alpha (1 - exp(-CE))^gamma CE with alpha {self.reweight_alpha}, "
                f"gamma {self.reweight_gamma} (Ye et al. 2025; eval_loss unweighted)"
                if self.reweight_gamma or self.reweight_alpha != 1.0
                else ""
            )
            + (
                f"; attention annealed from causal to full over {n} steps."
                if (n := self.attention_anneal_steps)
                else "."
            )
        )
        data = "\n".join(f"- {report.summary()}" for report in self.data_reports.values()) or "More information needed"
        card = path.read_text(encoding="utf-8").replace(
            "a fine-tuned version of [](https://huggingface.co/)", "trained"
        )
        for title, text in (("Model description", description), ("Training and evaluation data", data)):
            placeholder = f"## {title}\n\nMore information needed"
            card = (
                card.replace(placeholder, f"## {title}\n\n{text}")
                if placeholder in card
                else card + f"\n## {title}\n\n{text}\n"
            )
        path.write_text(card, encoding="utf-8")


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
    name_or_path: str,
    dtype: torch.dtype | str | None = None,
    load_in_4bit: bool = False,
    seed: int = 0,
    **kwargs: Any,
) -> LLaDAModelLM:
    """A checkpoint (path or hub id), or a randomly initialised `TINY_CONFIGS` entry by name.

    `load_in_4bit` quantises the frozen base with bitsandbytes (QLoRA); it needs bitsandbytes and a CUDA device.
    Other keyword arguments (`revision`, `attn_implementation`, `distributed_config=fsdp_config()` for FSDP2
    sharding under `torchrun`, ...) go to `from_pretrained`.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if name_or_path in TINY_CONFIGS:
        torch.manual_seed(seed)
        model = LLaDAModelLM(LLaDAConfig(**TINY_CONFIGS[name_or_path]))
        if kwargs.get("distributed_config") is None:
            return model.to(dtype) if dtype is not None else model
        # Sharding happens in `from_pretrained`: every rank passes the same seeded weights, each keeps its shards.
        kwargs.update(config=model.config, state_dict=model.state_dict())
        return LLaDAModelLM.from_pretrained(None, **kwargs, **({"dtype": dtype} if dtype is not None else {}))
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if dtype is not None:
        kwargs["dtype"] = dtype
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
# Sharded training (FSDP2)

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


# ---------------------------------------------------------------------------------------------------------------------
# Command line


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
    eps: float = field(default=DEFAULT_EPS, metadata={"help": "Minimum masking probability"})
    random_length_prob: float = field(
        default=PAPER_RANDOM_LENGTH_PROB, metadata={"help": "Pre-training: share of rows cut to a random length"}
    )
    attention_anneal_steps: int = field(default=0, metadata={"help": "Causal -> full attention over N steps"})
    reweight_gamma: float = field(
        default=0.0,
        metadata={"help": "Token-level reweighting alpha (1 - exp(-CE))^gamma CE (Ye et al. 2025); 0: plain loss"},
    )
    reweight_alpha: float = field(default=1.0, metadata={"help": "Scale of the token-level reweighting"})


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
        return AutoTokenizer.from_pretrained(name, revision=model_args.model_revision)
    except (OSError, ValueError):
        return None


def _load_config(model_args: ModelArguments) -> LLaDAConfig:
    if model_args.model_name_or_path in TINY_CONFIGS:
        return LLaDAConfig(**TINY_CONFIGS[model_args.model_name_or_path])
    return LLaDAConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)


def _training_data(data_args: DataArguments, tokenizer: Any, eos: int) -> tuple[Any, Any, list[DataReport]]:
    """Load, validate, tokenise and split the data (every row checked before the model is even loaded)."""
    if data_args.max_length < 1:
        raise DataError(f"--max_length must be at least 1, got {data_args.max_length}")
    if data_args.eval_size < 0:
        raise DataError(f"--eval_size must be 0 or more, got {data_args.eval_size}")
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
    common = dict(mode=data_args.mode, max_length=data_args.max_length, packing=packing, eos_token_id=eos)
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


def train_main(argv: list[str] | None = None) -> int:
    """`llada-hf train`: masked-diffusion pre-training or SFT, full or LoRA, with `Trainer` (logging, eval, resume).

    Any `TrainingArguments` flag works (`--output_dir`, `--max_steps`, `--learning_rate`, `--eval_strategy steps
    --eval_steps N`, `--resume_from_checkpoint`, `--push_to_hub`, ...). Every row is validated before the model is
    loaded; data and argument errors print one line and return 2. Ends with `save_metrics`, `save_state`, a model
    card and `save_model` (the merged model, plus `adapter/` for LoRA; pushed with `--push_to_hub`).
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), prog="llada-hf train")
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.disable_tqdm:
        import datasets

        datasets.disable_progress_bars()
    try:
        try:
            check_token_reweighting(data_args.reweight_gamma, data_args.reweight_alpha)
        except ValueError as error:
            raise DataError(f"--{error}") from None
        distributed_config = _distributed_config(model_args, training_args)
        tokenizer = _load_tokenizer(model_args)
        config = _load_config(model_args)
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        with training_args.main_process_first(desc="dataset preparation"):
            train_dataset, eval_dataset, reports = _training_data(data_args, tokenizer, pad)
    except (DataError, ParallelismError, OSError) as error:  # bad data or settings, missing files: one line, exit 2
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
        eps=data_args.eps,
        random_length_prob=data_args.random_length_prob if data_args.mode == "pretrain" else 0.0,
        max_length=data_args.max_length,
        pad_to_max_length=data_args.pad_to_max_length,
    )
    if model_args.use_peft:
        names = [part.strip() for item in model_args.lora_target_modules or [] for part in item.split(",")]
        targets: list[str] | str = [name for name in names if name] or list(DEFAULT_LORA_TARGETS)
        targets = targets[0] if targets == ["all-linear"] else targets
        model = get_lora_model(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, targets)
    trainer = DiffusionTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        attention_anneal_steps=data_args.attention_anneal_steps,
        reweight_gamma=data_args.reweight_gamma,
        reweight_alpha=data_args.reweight_alpha,
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


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "EVAL_EPOCH",
    "INDEX_COLUMN",
    "PAPER_RANDOM_LENGTH_PROB",
    "ROW_FORMATS",
    "TINY_CONFIGS",
    "DataArguments",
    "DataError",
    "DataReport",
    "DiffusionCollator",
    "DiffusionTrainer",
    "FSDP_MIN_TRANSFORMERS",
    "ModelArguments",
    "ParallelismError",
    "annealed_attention_mask",
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


if __name__ == "__main__":
    code = train_main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # torch 2.13 CPU DDP runs sometimes abort in interpreter shutdown (SIGABRT)
    raise SystemExit(code)
