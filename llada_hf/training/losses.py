"""Masked-diffusion forward process and losses, and the per-row noise seeds of the `Trainer` path.

The objectives follow the LLaDA paper (arXiv 2502.09992) and its GUIDELINES:

* pre-training: t ~ U(0, 1) per sequence, p_mask = (1 - eps) t + eps, every token masked with probability p_mask; the
  loss is sum over masked tokens of CE / p_mask, divided by b * l (all positions). Optionally (the paper: 1 % of the
  data) the batch is cut to a random length U{1..l} first (draw order: rand(1) [, randint], rand(b), rand(b, l)).
* SFT: the same forward process on [prompt | answer], the prompt never masked; answers are padded with EOS and the
  padding is a target; each masked token's CE / p_mask is divided by its sample's answer length (padding included),
  and the sum by the batch size.

Block diffusion (LLaDA2's training, `block_length=`): the same noising and loss, but the model sees
[noisy | clean] (twice the length) under `block_diffusion_mask`, so a noisy block is predicted from itself and the
*clean* earlier blocks, as the block-causal sampler later decodes it (`block_diffusion_logits`).

Both are the same formula, (1/b) sum_i (1/n_i) sum_{j masked} CE_ij / p_ij with n_i the row's length (pre-training)
or answer length (SFT): `diffusion_loss`; `forward_process` is the noising. `pretraining_loss` / `sft_loss` draw the
noise from one generator in the official order; `mask_batch` noises a padded batch row by row from seeds given by
`sample_seed(seed, row index, epoch)`, so the noise cannot depend on workers, accumulation, ranks or resuming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..generation.generation_llada2 import block_causal_mask
from ..loading import resolve_mask_token_id
from ..modeling import masked_diffusion_loss

IGNORE_INDEX = -100
DEFAULT_EPS = 1e-3
# The paper's variable-length rule for pre-training (1 % of the data). Opt-in in the library (`pretraining_loss`,
# `DiffusionCollator` default to 0), the default of `llada-hf train --mode pretrain`.
PAPER_RANDOM_LENGTH_PROB = 0.01
# Column holding each row's index in its dataset: the key of the row's noise (see `sample_seed`).
INDEX_COLUMN = "sample_index"
EVAL_EPOCH = -1  # the "epoch" of evaluation noise: every evaluation sees the same masks


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


def check_token_reweighting(gamma: float, alpha: float) -> None:
    """Refuse reweighting settings that would silently give a wrong loss (nan, inf, negative exponent or scale)."""
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"reweight_gamma must be a finite number >= 0 (0: no reweighting), got {gamma!r}.")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"reweight_alpha must be a finite number > 0, got {alpha!r}.")


def diffusion_loss(
    logits: torch.Tensor,
    labels: torch.LongTensor,
    p_mask: torch.Tensor | None = None,
    normalizer: torch.Tensor | None = None,
    *,
    reweight_gamma: float = 0.0,
    reweight_alpha: float = 1.0,
) -> torch.Tensor:
    """The masked-diffusion loss (`masked_diffusion_loss`, the models' and the likelihood's), optionally reweighted.

    Token-level reweighting (Ye et al. 2025, "Beyond Autoregression", arXiv:2410.14157): with `reweight_gamma` > 0
    each token's CE u is replaced by alpha (1 - exp(-u))^gamma u, the focal form of their adaptive weight, which
    shifts the gradient toward tokens the model still gets wrong (1 - exp(-u) is one minus the probability of the
    right token). The weight is not detached (as in a focal loss). gamma = 0, alpha = 1 is the plain ELBO term; the
    paper's code defaults to alpha 0.25, gamma 2. Training only: a reweighted sum is no longer a likelihood bound.
    """
    check_token_reweighting(reweight_gamma, reweight_alpha)
    transform = None
    if reweight_gamma != 0.0 or reweight_alpha != 1.0:

        def transform(token_loss: torch.Tensor) -> torch.Tensor:
            return reweight_alpha * (1 - torch.exp(-token_loss)).pow(reweight_gamma) * token_loss

    return masked_diffusion_loss(logits, labels, p_mask, normalizer, token_transform=transform)


def block_diffusion_mask(length: int, block_length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(2l, 2l) boolean mask over [noisy | clean] copies of a sequence (block diffusion, as LLaDA2 is trained).

    A noisy block sees itself and the clean earlier blocks; the clean copy is block-causal (`block_causal_mask`, the
    sampler's mask) and never sees the noise. So each noisy block is conditioned exactly as when the sampler decodes
    it with the earlier blocks finished, and every block is trained in one forward."""
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    causal = block_causal_mask(length, block_length, device)  # key block <= query block
    same_block, earlier = causal & causal.T, ~causal.T
    top = torch.cat([same_block, earlier], dim=1)
    bottom = torch.cat([torch.zeros_like(causal), causal], dim=1)
    return torch.cat([top, bottom], dim=0)


def block_diffusion_logits(
    model: nn.Module,
    noisy: torch.LongTensor,
    clean: torch.LongTensor,
    block_length: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (b, l, vocab) of the noisy tokens, from one forward over [noisy | clean] under `block_diffusion_mask`
    (both copies at positions 0..l-1). A 2-D padding `attention_mask` (b, l) hides padded keys of both copies."""
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} ids must have one shape")
    b, length = noisy.shape
    mask = block_diffusion_mask(length, block_length, noisy.device)[None, None]
    if attention_mask is not None:
        keep = attention_mask.bool().to(noisy.device).repeat(1, 2)
        eye = torch.eye(2 * length, dtype=torch.bool, device=noisy.device)
        mask = mask & keep[:, None, None, :] | eye  # a padded query still sees itself (no empty softmax row)
    positions = torch.arange(length, device=noisy.device).repeat(2)[None].expand(b, -1)
    logits = model(input_ids=torch.cat([noisy, clean], dim=1), attention_mask=mask, position_ids=positions).logits
    return logits[:, :length]


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
    block_length: int | None = None,
) -> torch.Tensor:
    """Pre-training ELBO of a batch (one forward): sum(CE / p_mask) / (b * l).

    With a padding `attention_mask` (b, l), padded positions are neither attended, masked nor targets, and row i is
    normalised by its own length (the sum of its mask): (1/b) sum_i sum(CE / p_mask) / l_i. `random_length_prob`
    (default 0, as `DiffusionCollator`; the paper uses `PAPER_RANDOM_LENGTH_PROB`) cuts the batch to a random length
    first. RNG draws, in order: rand(1) [, randint] for that rule (skipped when the probability is 0), then rand(b),
    rand(b, l). Works with a peft-wrapped model too. `reweight_gamma` / `reweight_alpha`: token-level reweighting
    (`diffusion_loss`). `block_length`: block diffusion (`block_diffusion_logits`) instead of full attention.
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
    if block_length:
        logits = block_diffusion_logits(model, noisy, input_ids, block_length, attention_mask)
    else:
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
    block_length: int | None = None,
) -> torch.Tensor:
    """SFT loss of EOS-padded [prompt | answer] rows: masked answer tokens' CE / p_mask / answer length, then / b.

    The answer length counts everything after the prompt, EOS padding included (the padding is a target: it teaches
    the model where answers end). RNG draws: rand(b), rand(b, l). `reweight_gamma` / `reweight_alpha`: token-level
    reweighting (`diffusion_loss`). `block_length`: block diffusion (`block_diffusion_logits`; blocks aligned at
    column 0, as the LLaDA2 sampler aligns them) instead of full attention.
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
    if block_length:
        logits = block_diffusion_logits(model, noisy, input_ids, block_length)
    else:
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
