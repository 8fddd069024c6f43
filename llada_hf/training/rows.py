"""Training rows: the accepted formats, their validation and their tokenisation (`encode_example`)."""

from __future__ import annotations

import re
from typing import Any

DEFAULT_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Bad training data or data settings, detected before training starts (the message says where and what)."""


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


def _token_ids(example: dict[str, Any], name: str, vocab_size: int | None = None) -> list[int]:
    value = example.get(name)
    if value is None:
        raise DataError(f"missing field {name!r}")
    if isinstance(value, (str, bytes)) or not all(
        isinstance(token, int) and not isinstance(token, bool) and token >= 0 for token in value
    ):
        raise DataError(f"field {name!r} must be a list of non-negative integer token ids")
    _check_vocab(value, name, vocab_size)
    return list(value)


def _check_vocab(ids: list[int], name: str, vocab_size: int | None) -> None:
    if vocab_size is not None and ids and max(ids) >= vocab_size:
        raise DataError(
            f"field {name!r}: token id {max(ids)} is outside the vocabulary (ids must be in [0, {vocab_size}))"
        )


def template_roles(tokenizer: Any = None) -> tuple[str, ...]:
    """The roles a chat row may use: those the tokenizer's chat template tests for (`role == '...'`), plus
    system/user/assistant; templates that write any role verbatim (LLaDA's) accept just those three."""
    template = getattr(tokenizer, "chat_template", None)
    found = re.findall(r"role['\"]?\]?\s*==\s*['\"](\w+)['\"]", template) if isinstance(template, str) else []
    return tuple(dict.fromkeys([*DEFAULT_ROLES, *found]))


def _messages(value: Any, name: str, roles: tuple[str, ...] | None = None) -> list[dict[str, str]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"field {name!r} must be a non-empty list of {{role, content}} messages")
    for number, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            raise DataError(f"field {name!r}: message {number} needs a non-empty string 'role'")
        if roles is not None and message["role"] not in roles:
            raise DataError(
                f"field {name!r}: message {number} has role {message['role']!r}; accepted roles: {', '.join(roles)}"
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(
                f"field {name!r}: message {number} 'content' must be a string, got {type(content).__name__}"
            )
    return list(value)


def row_type_error(example: Any) -> str | None:
    """The first field of a raw row whose type is wrong (before `datasets`/pyarrow sees it and fails on the whole
    column), or None. Only types: formats and roles are checked by `encode_example`."""
    if not isinstance(example, dict):
        return f"a row must be a JSON object / dict, got {type(example).__name__}"
    try:
        for name in ("input_ids", "prompt_ids", "answer_ids"):
            if _present(example, name):
                _token_ids(example, name)
        if _present(example, "messages"):
            _messages(example["messages"], "messages")
        for name in ("prompt", "completion"):
            if _present(example, name) and not isinstance(example[name], str):
                _messages(example[name], name)
        for name in ("answer", "text"):
            if _present(example, name):
                _string(example, name)
    except DataError as error:
        return str(error)
    return None


def encode_example(
    example: dict[str, Any], tokenizer: Any = None, eos_token_id: int | None = None, vocab_size: int | None = None
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

    Text is tokenised with `add_special_tokens=False` (the chat template writes BOS itself). Message roles must be
    the template's (`template_roles`); with `vocab_size`, every id must be below it (an id of another tokenizer would
    fail in the embedding at step 1).
    """
    ids, prompt_length = _encode(example, tokenizer, eos_token_id, vocab_size)
    _check_vocab(ids, "input_ids" if _present(example, "input_ids") else "tokenised row", vocab_size)
    return ids, prompt_length


def _encode(
    example: dict[str, Any], tokenizer: Any, eos_token_id: int | None, vocab_size: int | None
) -> tuple[list[int], int]:
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if _present(example, "input_ids"):
        ids = _token_ids(example, "input_ids", vocab_size)
        prompt_length = example.get("prompt_length") or 0
        if not ids or not isinstance(prompt_length, int) or not 0 <= prompt_length < len(ids):
            raise DataError("'input_ids' must be non-empty and 'prompt_length' in [0, len(input_ids))")
        return ids, prompt_length
    if _present(example, "prompt_ids") or _present(example, "answer_ids"):
        prompt, answer = _token_ids(example, "prompt_ids", vocab_size), _token_ids(example, "answer_ids", vocab_size)
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
        messages = _messages(example["messages"], "messages", template_roles(tokenizer))
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
            roles = template_roles(tokenizer)
            history, answer = (
                _messages(example["prompt"], "prompt", roles),
                _messages(example["completion"], "completion", roles),
            )
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
