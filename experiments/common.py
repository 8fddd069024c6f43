"""Shared machinery of the experiments: one backbone, two training objectives, two decoders, result files.

Both models are `LLaDAModelLM` built from the same `LLaDAConfig` and trained by the same loop on the same batches:

* masked diffusion (MDM): the package's losses (`llada_hf.training.pretraining_loss` / `sft_loss`), decoded with
  `model.generate()` (the diffusion sampler);
* autoregressive twin (AR): the same transformer run with a causal 4-D additive attention mask and a next-token
  cross-entropy, decoded greedily left to right.

Token ids are small integers of a task-specific vocabulary (no tokenizer needed); every task reserves the ids below.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from llada_hf import LLaDAConfig, LLaDAModelLM
from llada_hf.training import annealed_attention_mask, pretraining_loss, sft_loss

PAD = EOS = 0
MASK = 1
BOS = 2
FIRST_FREE_ID = 3
RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Backbone:
    """The architecture shared by the MDM and its AR twin."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 192
    rope_theta: float = 10000.0  # LLaDA's 500000 leaves almost no positional resolution in 16-dim heads

    def config(self, vocab_size: int, max_length: int) -> LLaDAConfig:
        return LLaDAConfig(
            vocab_size=vocab_size, max_position_embeddings=max_length, mask_token_id=MASK, eos_token_id=EOS,
            pad_token_id=PAD, bos_token_id=BOS, **asdict(self),
        )  # fmt: skip


def build_model(backbone: Backbone, vocab_size: int, max_length: int, seed: int) -> LLaDAModelLM:
    torch.manual_seed(seed)
    model = LLaDAModelLM(backbone.config(vocab_size, max_length))
    model.generation_config.update(mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD, eot_token_id=None)
    return model


def causal_mask(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, 1, T, T) additive mask: query i sees keys j <= i. 4-D masks pass through the model unchanged."""
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1)
    return torch.zeros(length, length, dtype=dtype).masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def ar_logits(model: LLaDAModelLM, input_ids: torch.LongTensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=causal_mask(input_ids.shape[1])).logits


def ar_loss(model: LLaDAModelLM, input_ids: torch.LongTensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the tokens after the prompt (prompt length 0: on every token but the first)."""
    logits = ar_logits(model, input_ids)[:, :-1]
    targets = input_ids[:, 1:].clone()
    positions = torch.arange(1, input_ids.shape[1])[None, :]
    targets[positions < prompt_lengths[:, None].clamp(min=1)] = -100
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100)


def mdm_loss(
    model: LLaDAModelLM,
    input_ids: torch.LongTensor,
    prompt_lengths: torch.Tensor,
    generator: torch.Generator,
    **reweighting: float,
) -> torch.Tensor:
    """The package's masked-diffusion losses: pre-training ELBO if no row has a prompt, else SFT (prompt kept).

    `reweighting`: `reweight_gamma` / `reweight_alpha`, the package's token-level reweighting (Ye et al. 2025)."""
    if bool((prompt_lengths == 0).all()):
        return pretraining_loss(model, input_ids, random_length_prob=0.0, generator=generator, **reweighting)
    return sft_loss(model, input_ids, prompt_lengths, generator=generator, **reweighting)


Batch = tuple[torch.LongTensor, torch.Tensor]  # (input_ids (B, T), prompt_lengths (B,))


def sft_batches(
    task: Any, batch_size: int, seed: int, on_prompts: Callable[[torch.LongTensor], None] | None = None
) -> Callable[[int], Batch]:
    """`next_batch(step)` for `train`: fresh [prompt | answer] rows from `task.sample(batch_size, generator)` (one
    generator seeded with `seed`), all with prompt length `task.prompt_length`; `on_prompts` sees each batch's
    prompts."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.full((batch_size,), task.prompt_length)

    def next_batch(step: int) -> Batch:
        prompts, answers = task.sample(batch_size, generator)
        if on_prompts is not None:
            on_prompts(prompts)
        return torch.cat([prompts, answers], dim=1), prompt_lengths

    return next_batch


class _WithAttentionMask(torch.nn.Module):
    """`model` called with a fixed 4-D attention mask, so the package's losses train through an annealed mask."""

    def __init__(self, model: LLaDAModelLM, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mask, self.config = model, mask, model.config

    def forward(self, input_ids: torch.LongTensor):
        return self.model(input_ids=input_ids, attention_mask=self.mask)


def train(
    model: LLaDAModelLM,
    kind: str,
    next_batch: Callable[[int], Batch],
    steps: int,
    lr: float,
    seed: int,
    warmup: int = 100,
    weight_decay: float = 0.01,
    log_every: int = 0,
    reweight_gamma: float = 0.0,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    anneal_steps: int = 0,
    eval_every: int = 0,
    evaluate: Callable[[LLaDAModelLM], dict] | None = None,
) -> dict[str, Any]:
    """AdamW, linear warm-up then cosine decay to 10 %; `kind` is "mdm" or "ar".

    Returns the final loss (mean of the last 50 steps), wall and CPU seconds, and `loss_curve`: [step, mean loss over
    the last `log_every` steps] every `log_every` steps (also printed). MDM options: `reweight_gamma` > 0, token-level
    reweighting of the diffusion loss (alpha 1; Adam is invariant to a constant scale of the loss, up to gradient
    clipping); `loss_fn(model, input_ids, prompt_lengths, generator)` instead of `mdm_loss`; `anneal_steps`, attention
    annealed from causal to bidirectional over the first steps (`annealed_attention_mask`, AR -> diffusion
    adaptation). `evaluate(model)` every `eval_every` steps and at step 0 gives `curve` ([{"step", ...}])."""
    if reweight_gamma and kind != "mdm":
        raise ValueError("reweight_gamma applies to the masked-diffusion loss only")
    if kind not in ("mdm", "ar"):
        raise ValueError(kind)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def checkpoint(step: int) -> None:
        model.eval()
        curve.append({"step": step, **evaluate(model)})
        model.train()

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed + 12345)
    if loss_fn is None:

        def loss_fn(m, ids, lengths, gen):
            return mdm_loss(m, ids, lengths, gen, reweight_gamma=reweight_gamma)

    start, cpu, losses, loss_curve, curve = time.time(), time.process_time(), [], [], []
    tracking = evaluate is not None and eval_every > 0
    if tracking:
        checkpoint(0)
    for step in range(steps):
        input_ids, prompt_lengths = next_batch(step)
        if kind == "mdm":
            net = model
            if step < anneal_steps:
                net = _WithAttentionMask(model, annealed_attention_mask(input_ids.shape[1], step / anneal_steps))
            loss = loss_fn(net, input_ids, prompt_lengths, generator)
        else:
            loss = ar_loss(model, input_ids, prompt_lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            mean = round(statistics.fmean(losses[-log_every:]), 4)
            loss_curve.append([step + 1, mean])
            print(f"  [{kind}] step {step + 1}/{steps} loss {mean:.4f}", flush=True)
        if tracking and (step + 1) % eval_every == 0:
            checkpoint(step + 1)
    model.eval()
    record = {
        "final_loss": statistics.fmean(losses[-50:]),
        "train_s": round(time.time() - start, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "loss_curve": loss_curve,
    }
    return {**record, "curve": curve} if tracking else record


@torch.no_grad()
def mdm_decode(
    model: LLaDAModelLM, prompts: torch.LongTensor, answer_length: int, **generate_kwargs: Any
) -> tuple[torch.LongTensor, int]:
    """Diffusion answers (B, answer_length) and the number of forwards; default: one token per step, greedy."""
    kwargs = dict(max_new_tokens=answer_length, steps=answer_length, block_length=answer_length)
    kwargs.update(generate_kwargs)
    if kwargs.get("threshold") is not None:
        kwargs.pop("steps")
    out = model.generate(prompts, return_dict_in_generate=True, **kwargs)
    return out.sequences[:, prompts.shape[1] :], out.nfe


@torch.no_grad()
def mdm_decode_order(
    model: LLaDAModelLM, prompts: torch.LongTensor, answer_length: int
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Answers (B, L) decoded one token per step, and the step (0 = first) at which each position was committed."""
    out = model.generate(
        prompts, max_new_tokens=answer_length, steps=answer_length, block_length=answer_length,
        output_history=True, return_dict_in_generate=True,
    )  # fmt: skip
    still_masked = torch.stack(out.history)[:, :, prompts.shape[1] :] == model.generation_config.mask_token_id
    return out.sequences[:, prompts.shape[1] :], still_masked.sum(0)  # masked after steps 0..s-1 <=> committed at s


@torch.no_grad()
def mdm_infill(model: LLaDAModelLM, canvas: torch.LongTensor) -> torch.LongTensor:
    """Fill the MASK tokens inside `canvas` (one per step, greedy)."""
    n_masks = int((canvas == MASK).sum(-1).max())
    return model.generate(canvas, max_new_tokens=0, steps=n_masks, infill=True)


@torch.no_grad()
def ar_decode(model: LLaDAModelLM, prompts: torch.LongTensor, answer_length: int) -> torch.LongTensor:
    """Greedy left-to-right decoding with the causal mask (no KV cache: the sequences are short)."""
    x = prompts
    for _ in range(answer_length):
        next_token = ar_logits(model, x)[:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, next_token], dim=1)
    return x[:, prompts.shape[1] :]


def decode(model: LLaDAModelLM, kind: str, prompts: torch.LongTensor, answer_length: int) -> torch.LongTensor:
    if kind == "mdm":
        return mdm_decode(model, prompts, answer_length)[0]
    return ar_decode(model, prompts, answer_length)


# ---------------------------------------------------------------------------------------------------------------------
# Results


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def fmt_pct(stats: dict[str, float]) -> str:
    """ "97.5 ± 2.1" (percent, mean ± sample std over seeds)."""
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, markdown: str, data: dict[str, Any], figure=None, out_dir: Path | None = None) -> Path:
    """Write `<name>.md`, `<name>.json` and (if given) `<name>.png` to `out_dir` (default experiments/results), then
    print the table and where it went."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.md").write_text(markdown)
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    if figure is not None:
        figure.savefig(out_dir / f"{name}.png", dpi=120, bbox_inches="tight")
    print(markdown)
    print(f"wrote {out_dir}/{name}.{{md,json{',png' if figure is not None else ''}}}")
    return out_dir


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    """A matplotlib figure (Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def setup(threads: int) -> None:
    torch.set_num_threads(threads)


def common_arguments(parser, seeds: int = 3) -> None:
    parser.add_argument("--seeds", type=int, default=seeds, help="number of seeds (0, 1, ...)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds): checks the script runs")


def run_parallel(function: Callable[..., Any], calls: list[tuple], jobs: int, context: str = "fork") -> list:
    """`function(*call)` for each call, in up to `jobs` processes (1: in this process); results in call order.

    The experiments' runs are independent and seeded, so the results do not depend on `jobs` (one thread each: pass
    `--threads 1`). `context="spawn"` for functions whose state must not be forked."""
    if jobs <= 1 or len(calls) <= 1:
        return [function(*call) for call in calls]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(calls)), mp_context=multiprocessing.get_context(context)) as pool:
        futures = [pool.submit(function, *call) for call in calls]
        return [future.result() for future in futures]


def to_llama(model: LLaDAModelLM) -> LlamaForCausalLM:
    """The same weights in a `LlamaForCausalLM` (LLaDA's layout is Llama's: RMSNorm, SwiGLU, RoPE, no biases): the
    AR twin for HF `generate()` (bench/bench_answers.py) and for `convert_llama_to_llada` (adaptation.py)."""
    c = model.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads or c.num_attention_heads, rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings, rope_theta=c.rope_theta, tie_word_embeddings=False,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        attention_bias=False, mlp_bias=False,
    )  # fmt: skip
    llama = LlamaForCausalLM(config).eval()
    missing, unexpected = llama.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(f"weight names differ: missing {missing}, unexpected {unexpected}")
    return llama
