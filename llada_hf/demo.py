"""The embedded demo model: a 0.7M-parameter LLaDA that answers chat-formatted addition questions.

It ships with the package (`llada_hf/assets/demo`, ~3 MB) so `llada-hf demo` runs offline on a fresh machine. It was
trained by `scripts/train_demo_model.py` with this package's own masked-diffusion SFT code (`DiffusionCollator` +
`DiffusionTrainer`) on data generated here (`arithmetic_rows`): "What is 12 + 7?" -> "12 + 7 = 19.", a, b in 0..99,
four phrasings, a fixed set of operand pairs held out for evaluation. `run_demo` generates through
`pipeline("text-generation")` with the LLaDA chat template and draws the canvas while it denoises.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .loading import DEMO_DIR, load_model_and_tokenizer, model_device

REAL_MODEL = "GSAI-ML/LLaDA-8B-Instruct"

# The demo tokenizer: bytes 0-255, a few whole-word tokens, LLaDA's special tokens at small ids (vocabulary 320).
DEMO_SPECIAL_TOKEN_IDS = {
    "<|mdm_mask|>": 312,
    "<|endoftext|>": 313,
    "<|startoftext|>": 314,
    "<|start_header_id|>": 315,
    "<|end_header_id|>": 316,
    "<|eot_id|>": 317,
}
DEMO_WORDS = (" plus", "user", "assistant", "\n\n", "What", " is", " +", " =", "Add", " and")
DEMO_VOCAB_SIZE = 320
DEMO_MODEL_CONFIG: dict[str, Any] = dict(
    vocab_size=DEMO_VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=128, mask_token_id=312, eos_token_id=313, pad_token_id=313, bos_token_id=314,
)  # fmt: skip
# Answers are at most 12 tokens ("99 + 99 = 198.") + <|eot_id|> + EOS: a 16-token canvas, one token per step.
DEMO_GENERATION = dict(max_new_tokens=16, steps=16, block_length=16)

PHRASINGS = ("What is {a} + {b}?", "{a} + {b} = ?", "Add {a} and {b}.", "What is {a} plus {b}?")
DEMO_PROMPTS = ("What is 12 + 7?", "Add 45 and 38.", "What is 9 plus 90?")
HELD_OUT_PAIRS = 300


def build_demo_tokenizer():
    """The demo's byte-level tokenizer with the LLaDA chat template (what `scripts/train_demo_model.py` saves)."""
    from .tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(words=DEMO_WORDS, special_token_ids=DEMO_SPECIAL_TOKEN_IDS, vocab_size=DEMO_VOCAB_SIZE)


def split_pairs(seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """All (a, b) in 0..99 x 0..99, split into training pairs and `HELD_OUT_PAIRS` held-out pairs (fixed seed)."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(seed).shuffle(pairs)
    return pairs[HELD_OUT_PAIRS:], pairs[:HELD_OUT_PAIRS]


def arithmetic_answer(a: int, b: int) -> str:
    return f"{a} + {b} = {a + b}."


def arithmetic_rows(pairs: list[tuple[int, int]], phrasings: tuple[str, ...] = PHRASINGS) -> list[dict[str, Any]]:
    """Chat rows `{"messages": [user, assistant]}`, one per pair and phrasing (`llada_hf.training`'s SFT format)."""
    return [
        {
            "messages": [
                {"role": "user", "content": phrasing.format(a=a, b=b)},
                {"role": "assistant", "content": arithmetic_answer(a, b)},
            ]
        }
        for a, b in pairs
        for phrasing in phrasings
    ]


def load_demo_model(path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the embedded demo model, loaded through the Auto classes (offline, CPU, eval mode)."""
    from transformers import AutoModel, AutoTokenizer

    from . import register

    register()
    folder = Path(path) if path is not None else DEMO_DIR
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"No demo model in {folder}; rebuild it with `python scripts/train_demo_model.py --output {folder}`."
        )
    model = AutoModel.from_pretrained(folder, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def answer_questions(model, tokenizer, questions: list[str], **generate_kwargs: Any) -> list[str]:
    """Batched greedy answers to user questions (chat template, left padding); for evaluation and tests."""
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    kwargs = {**DEMO_GENERATION, **generate_kwargs}
    device = model_device(model)
    output = model.generate(batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), **kwargs)
    answers = output[:, batch.input_ids.shape[1] :].cpu()
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in answers]


def run_demo(args: argparse.Namespace, load: Callable[[argparse.Namespace], tuple] | None = None) -> int:
    """`llada-hf demo`: answer a few prompts through `pipeline("text-generation")`, drawing each denoising step.

    `load(args)` gives (model, tokenizer) (the CLI passes its loader with the loading flags); by default the model
    `args.model` (None: the embedded demo model) in `args.dtype`.
    """
    from transformers import pipeline

    from .progress import StepProgress
    from .visualize import DenoisingVisualizer

    torch.manual_seed(0)
    model_path = getattr(args, "model", None)
    if load is None:
        model, tokenizer = load_model_and_tokenizer(model_path, getattr(args, "dtype", "auto"))
    else:
        model, tokenizer = load(args)
    embedded = model_path is None
    settings = {}  # flags given override the model's generation_config.json; the rest stays the model's
    for name in ("max_new_tokens", "steps", "block_length"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    shown = {**model.generation_config.to_dict(), **settings}
    shown["steps"] = shown.get("steps") or shown["max_new_tokens"]
    prompts = list(getattr(args, "prompt", None) or DEMO_PROMPTS)
    visualize = not getattr(args, "no_visualize", False)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)

    name = "the embedded demo model (a 0.7M-parameter LLaDA trained to add numbers)" if embedded else model_path
    print(f"LLaDA masked-diffusion demo: {name}")
    if embedded:
        forms = " / ".join(p.format(a="a", b="b") for p in PHRASINGS)
        print(f"It answers additions of two numbers 0-99 asked as: {forms}")
    print(
        f"Each answer starts as {shown['max_new_tokens']} masks (░) and is filled in {shown['steps']} denoising "
        "steps: every step predicts all masked positions at once and keeps the most confident.\n",
        flush=True,
    )
    for prompt in prompts:
        print(f"User: {prompt}", flush=True)
        if visualize:
            streamer = DenoisingVisualizer(tokenizer, total_steps=shown["steps"])
        else:
            streamer = StepProgress(shown["steps"])  # a bar on a terminal, nothing when piped
        result = pipe(
            [{"role": "user", "content": prompt}],
            streamer=streamer,
            return_full_text=False,
            skip_special_tokens=True,
            **settings,
        )
        print(f"LLaDA: {result[0]['generated_text'].strip()}\n", flush=True)

    if embedded:
        print(
            "The same commands run the real model (16 GB in bf16; a GPU is advised):\n"
            f"  llada-hf demo --model {REAL_MODEL}\n"
            f"  llada-hf chat --model {REAL_MODEL} --visualize\n"
            "or from Python:\n"
            "  import llada_hf; from transformers import AutoModel, AutoTokenizer, pipeline\n"
            f'  model = AutoModel.from_pretrained("{REAL_MODEL}", dtype="bfloat16")\n'
            f'  tokenizer = AutoTokenizer.from_pretrained("{REAL_MODEL}")\n'
            '  pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)'
        )
    sys.stdout.flush()
    return 0


__all__ = [
    "DEMO_DIR",
    "DEMO_PROMPTS",
    "arithmetic_rows",
    "answer_questions",
    "build_demo_tokenizer",
    "load_demo_model",
    "run_demo",
    "split_pairs",
]
