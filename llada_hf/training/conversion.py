"""LoRA (config, wrapping, saving and reloading a trained model) and autoregressive -> diffusion conversion."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling import LLaDAConfig, LLaDAModelLM

# Attention (split, or LLaDA2's fused qkv_proj) and MLP projections. Never the embedding, the norms or the head.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
    model: nn.Module,
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
    from transformers import AutoModel

    from .. import register

    register()
    model = AutoModel.from_pretrained(path, **kwargs)  # any family
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
