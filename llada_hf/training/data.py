"""Datasets for training: loading files (`load_rows`), validating and tokenising once (`prepare_dataset`), packing,
and the padding collator (`DiffusionCollator`). Noise is drawn later, in `DiffusionTrainer.compute_loss`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .losses import IGNORE_INDEX, INDEX_COLUMN
from .rows import DataError, encode_example, row_type_error

logger = logging.getLogger(__name__)


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
    vocab_size: int | None = None,
) -> tuple[Any, DataReport]:
    """Validate and tokenise every row once (`Dataset.map`), apply `max_length`, index the rows; before training.

    Returns `(dataset, report)`: columns `input_ids`, `prompt_length` and `INDEX_COLUMN` (the row's position, the key
    of its noise). Invalid rows raise `DataError` naming each row's place (`locate(i)`: a file line, else "row i")
    and the field. SFT rows longer than `max_length` are cut (answer truncated) or, when the prompt alone fills
    `max_length`, dropped; both are counted in the report (and logged). Pre-training rows are cut, or with `packing`
    concatenated and split into `max_length` blocks (nothing lost). A split with nothing trainable left is refused.
    With `vocab_size` (the model's), token ids at or above it are refused. A list of rows is type-checked row by row
    first, so a wrong type names its own row (pyarrow would fail on the whole column, blaming other rows).
    """
    from datasets import Dataset, Features, Sequence, Value

    where = source or name
    if isinstance(dataset, list):  # every key of every row (`Dataset.from_list` keeps the first row's keys only)
        _raise_invalid(where, [(i, e) for i, row in enumerate(dataset) if (e := row_type_error(row))], len(dataset),
                       locate or _row_locator(where))  # fmt: skip
        keys = list(dict.fromkeys(key for row in dataset for key in row))
        try:
            dataset = Dataset.from_list([{key: row.get(key) for key in keys} for row in dataset])
        except (TypeError, ValueError, ArithmeticError) as error:  # pyarrow's mixed-type errors
            raise DataError(f"{where}: rows of mixed types ({type(error).__name__}: {error})") from None
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{name} data must be a datasets.Dataset (map-style) or a list of rows, got {type(dataset)}")
    if mode not in ("sft", "pretrain"):
        raise DataError(f"mode must be 'sft' or 'pretrain', got {mode!r}")
    if max_length is not None and max_length < 1:
        raise DataError(f"max_length must be at least 1, got {max_length}")
    if packing and (mode != "pretrain" or max_length is None):
        raise DataError("packing is for pre-training and needs max_length")
    if len(dataset) == 0:
        raise DataError(f"{where}: no rows")
    locate = locate or _row_locator(where)

    def encode(example: dict[str, Any]) -> dict[str, Any]:
        try:
            ids, prompt_length = encode_example(example, tokenizer, eos_token_id, vocab_size)
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
    _raise_invalid(
        where, [(index, error) for index, error in enumerate(encoded["error"]) if error], len(encoded), locate
    )
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


def _raise_invalid(where: str, errors: list[tuple[int, str]], rows: int, locate: Callable[[int], str]) -> None:
    """`DataError` naming the place of the first three invalid rows (and how many there are), if any."""
    if errors:
        shown = "; ".join(f"{locate(index)}: {error}" for index, error in errors[:3])
        more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
        raise DataError(f"{where}: {len(errors)} invalid row(s) of {rows}: {shown}{more}")


_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _first_json_error(path: str) -> str | None:
    """The first line of a JSON-lines file that is not a JSON object or has a field of the wrong type, with its real
    line number (pyarrow's own error names neither)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                return f"{path} line {number}: invalid JSON ({error.msg}, column {error.colno})"
            if (problem := row_type_error(row)) is not None:
                return f"{path} line {number}: {problem}"
    return None


def _jsonl_dataset(path: str) -> Any:
    """The JSON-lines rows as a `Dataset`, a field missing from some rows filled with None. Some `datasets` releases
    (4.x) refuse such a file outright; the row checks then name the line that lacks the field, as on other releases."""
    from datasets import Dataset

    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return Dataset.from_dict({key: [row.get(key) for row in rows] for key in keys})


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
        if jsonl is None or bad is not None:
            raise DataError(bad or f"{label}: could not load the data: {type(error).__name__}: {error}") from error
        dataset = _jsonl_dataset(jsonl)  # every line parses and type-checks: rows are checked, by line, when encoded
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
    live in `DiffusionTrainingArguments` (`eps`, `random_length_prob`, `noise_seed`); the collator's `eps`,
    `random_length_prob` and `seed` (default None: unset) are the older way to give them, copied into the arguments by
    `DiffusionTrainer`, which noises each batch in `compute_loss` (`mask_batch`). Rows that are not tokenised yet
    are encoded here (`encode_example`, needs `tokenizer` for text); `DiffusionTrainer` tokenises its datasets once
    beforehand. SFT batches padded to the batch maximum make n_i (answer + padding) depend on the batch composition:
    use `pad_to_max_length` when GA/DDP must equal the big batch exactly.
    """

    mask_token_id: int
    pad_token_id: int
    mode: str = "sft"
    tokenizer: Any = None
    eps: float | None = None
    random_length_prob: float | None = None
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
