"""An offline tokenizer with LLaDA's special tokens and its exact chat template, for tests, demos and tiny models.

The real LLaDA tokenizer (126k tokens) cannot be downloaded here. `build_tiny_tokenizer()` makes a byte-level one: ids
0-255 are bytes, optional extra words follow, `<|reserved_token_N|>` fillers pad up to the special tokens, which sit at
the ids the tiny configs use (mask 1000, EOS = PAD 1001, BOS 1002, ...). Like the official tokenizer, it adds no BOS
or EOS on `tokenizer(text)`: the chat template writes BOS.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Roles the template renders a header for. The official template writes whatever `role` says, so an empty or
# misspelt role gives a headerless or unknown turn the model never saw in training; this one refuses it.
CHAT_ROLES = ("system", "user", "assistant")

# The official template, written from its specification: BOS before the first message only; each message is
# header(role) + "\n\n" + content trimmed of surrounding whitespace + <|eot_id|>; the assistant header is always
# appended, whatever add_generation_prompt says. Only addition: a role outside CHAT_ROLES raises.
LLADA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] is not string or message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat message ' ~ loop.index0 ~ ': role must be one of system, user, assistant; got ' "
    "~ (message['role'] | string | tojson)) }}"
    "{% endif %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)


def check_chat_messages(messages, name: str = "messages") -> None:
    """Refuse what the template would render wrongly: a non-list, a message without a string `role` from
    `CHAT_ROLES` (an empty role renders a headerless turn) or without string `content`."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{name} must be a non-empty list of {{'role', 'content'}} messages.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{name}[{index}] must be a {{'role', 'content'}} dict, got {type(message).__name__}.")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ValueError(f"{name}[{index}]: role must be one of {', '.join(CHAT_ROLES)}; got {role!r}.")
        if not isinstance(message.get("content"), str):
            raise TypeError(f"{name}[{index}]: content must be a string, got {type(message.get('content')).__name__}.")


# Official ids of the 8B tokenizer, for reference and for configs that use the real vocabulary.
OFFICIAL_SPECIAL_TOKEN_IDS = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": 126081,
    "<|mdm_mask|>": 126336,
    "<|start_header_id|>": 126346,
    "<|end_header_id|>": 126347,
    "<|eot_id|>": 126348,
}

TINY_SPECIAL_TOKEN_IDS = {
    "<|mdm_mask|>": 1000,
    "<|endoftext|>": 1001,
    "<|startoftext|>": 1002,
    "<|start_header_id|>": 1003,
    "<|end_header_id|>": 1004,
    "<|eot_id|>": 1005,
}


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable symbol table of byte-level BPE (GPT-2), so that token id b is byte b."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tiny_tokenizer(
    words: list[str] | tuple[str, ...] = (),
    special_token_ids: dict[str, int] | None = None,
    vocab_size: int = 1024,
) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with LLaDA's special tokens at `special_token_ids` and the LLaDA chat template.

    `words` become single tokens (ids 256, 257, ...) when they appear as whole pre-tokens (e.g. " cat" with its
    leading space, as byte-level pre-tokenization produces); everything else falls back to bytes.
    """
    special_token_ids = dict(special_token_ids or TINY_SPECIAL_TOKEN_IDS)
    byte_symbols = _bytes_to_unicode()
    vocab = {byte_symbols[b]: b for b in range(256)}
    merges = []
    for word in words:
        symbols = "".join(byte_symbols[b] for b in word.encode())
        if symbols in vocab:
            continue
        # Left-to-right merges so the whole word becomes one token.
        for end in range(2, len(symbols) + 1):
            left, right = symbols[: end - 1], symbols[end - 1]
            if symbols[:end] not in vocab:
                merges.append((left, right))
                vocab[symbols[:end]] = len(vocab)
    first_special = min(special_token_ids.values())
    if len(vocab) > first_special:
        raise ValueError(f"{len(vocab)} byte/word tokens do not fit below the first special id {first_special}.")
    if max(special_token_ids.values()) >= vocab_size:
        raise ValueError(f"special token ids must be < vocab_size ({vocab_size}).")
    by_id = {i: token for token, i in special_token_ids.items()}
    for i in range(len(vocab), vocab_size):
        vocab[by_id.get(i, f"<|reserved_token_{i}|>")] = i

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
        additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    for token, token_id in special_token_ids.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise AssertionError(f"{token} got id {tokenizer.convert_tokens_to_ids(token)}, expected {token_id}")
    return tokenizer
