"""Conditional log-likelihood of an answer given a prompt under LLaDA: the Monte-Carlo ELBO of the paper (Eq. 6).

A masked diffusion model has no exact token-by-token likelihood; the paper scores an answer a (length L) after a
prompt p with the lower bound

    log p(a | p) >= E_{l ~ U{1..L}} E_{S ~ U(l-subsets)} [(L / l) sum_{i in S} log p_theta(a_i | p, a with S masked)]

`log_likelihood` is the official estimator (ML-GSAI `get_log_likelihood.py`) to the last random draw: with the same
seed it returns the official number. Per iteration it draws one `randint(1, L + 1)` on the model device, spreads
`batch_size` mask counts evenly over 1..L from it (stratified), and masks each row with a CPU `randperm(L)`.

`batch_log_likelihood` scores many (prompt, answer) pairs: it draws the same random numbers, in the same order, as
calling `log_likelihood` on each pair in turn, but packs the rows of all pairs into few forwards (sorted by length,
right-padded with an attention mask) and applies the LM head only at masked positions. It also offers two estimators
that are deterministic (no global RNG) and are **deviations** from the official one:

- `method="exact"`: enumerate all 2^L - 1 mask sets with their probabilities: the expectation itself (short answers).
- `method="stratified"`: `mc_num` samples with counts spread evenly over 1..L and masks taken as cyclic windows of
  permutations drawn from a private generator seeded with `seed`: every position is masked about equally often, so
  the variance is lower than the official estimator's, and each sample's mask set is still uniform given its count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F

from .generation import classifier_free_guidance
from .loading import model_device, resolve_mask_token_id
from .modeling import masked_diffusion_loss

IdsLike = torch.Tensor | Sequence[int]
METHODS = ("mc", "stratified", "exact")
_PAIRS_PER_CHUNK = 256  # pairs whose rows are planned and packed together by batch_log_likelihood


# ---------------------------------------------------------------------------------------------------------------------
# Validation helpers


def _as_ids(ids: IdsLike, name: str, vocab_size: int | None = None) -> torch.LongTensor:
    """A 1-D int64 CPU tensor from a list / 1-D tensor / (1, n) tensor of integer ids in [0, vocab_size).

    Floats are refused, not truncated (as `generate()` refuses them): 5.7 is not a token id.
    """
    if isinstance(ids, torch.Tensor):
        tensor = ids.detach()
    else:
        try:
            tensor = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a 1-D sequence of integer token ids: {error}") from None
    if tensor.numel() and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tensor.dtype}.")
    tensor = tensor.long()
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(tensor.shape)}.")
    if vocab_size is not None and tensor.numel() and (tensor.min() < 0 or tensor.max() >= vocab_size):
        bad = tensor[(tensor < 0) | (tensor >= vocab_size)][0].item()
        raise ValueError(f"{name} must hold ids in the vocabulary [0, {vocab_size}), got {bad}.")
    return tensor.cpu()


def _vocab_size(model) -> int | None:
    return getattr(getattr(model, "config", None), "vocab_size", None)


def _as_pair(pair, index: int, vocab_size: int | None) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`pairs[index]` as (prompt, answer) id tensors; anything but a 2-item (prompt_ids, answer_ids) is refused."""
    if isinstance(pair, (str, bytes, torch.Tensor)) or not isinstance(pair, Sequence) or len(pair) != 2:
        what = f"{len(pair)} items" if isinstance(pair, Sequence) else type(pair).__name__
        raise ValueError(f"pairs[{index}] must be a (prompt_ids, answer_ids) pair, got {what}.")
    return (
        _as_ids(pair[0], f"prompt_ids (pair {index})", vocab_size),
        _as_ids(pair[1], f"answer_ids (pair {index})", vocab_size),
    )


def _check_pair(prompt: torch.Tensor, answer: torch.Tensor, mask_id: int, index: int | None = None) -> None:
    where = "" if index is None else f" (pair {index})"
    if answer.numel() == 0:
        raise ValueError(f"The answer is empty{where}: there is nothing to score.")
    for name, ids in (("prompt", prompt), ("answer", answer)):
        if bool((ids == mask_id).any()):
            raise ValueError(
                f"The {name} contains the mask token {mask_id}{where}: it would be scored as a masked position."
            )


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}.")


def _check_settings(mc_num: int, batch_size: int, cfg_scale: float, method: str) -> None:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid: {METHODS}.")
    # nan would slip through `< 0` and fail deep in CFG; inf turns every value into nan
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)):
        raise TypeError(f"cfg_scale must be a finite number >= 0 (0 = no guidance), got {type(cfg_scale).__name__}.")
    if not math.isfinite(cfg_scale) or cfg_scale < 0:
        raise ValueError(f"cfg_scale must be a finite number >= 0 (0 = no guidance), got {cfg_scale!r}.")
    if method == "exact":
        return
    _check_positive_int("mc_num", mc_num)
    if method == "mc":
        _check_positive_int("batch_size", batch_size)
        if mc_num % batch_size:
            raise ValueError(
                f"mc_num ({mc_num}) must be divisible by batch_size ({batch_size}): the official estimator would "
                f"silently use only {mc_num // batch_size * batch_size} samples."
            )


# ---------------------------------------------------------------------------------------------------------------------
# Random mask draws


def official_mask_draw(
    answer_len: int, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """One iteration of the official forward process: (counts (b,), answer masks (b, L)), official RNG order.

    One `randint(1, L + 1, ())` on `device`, counts on an fp32 linspace rounded half-to-even and wrapped into 1..L,
    then one CPU `randperm(L)` per row. With `generator`, every draw comes from it, on its device. Kept as is: the
    half-to-even rounding over-weights some counts when the grid spacing L/b produces .5 (docs/EVAL.md).
    """
    length, rows = answer_len, batch_size
    if generator is None:
        k = torch.randint(1, length + 1, (), device=device)
    else:
        k = torch.randint(1, length + 1, (), device=generator.device, generator=generator).to(device)
    counts = torch.round(torch.linspace(float(k), k + (rows - 1) * (length / rows), steps=rows, device=device)).long()
    counts = (counts - 1) % length + 1
    leading = torch.arange(length, device=device)[None, :] < counts[:, None]
    masks = torch.empty_like(leading)
    for row in range(rows):
        if generator is None:
            perm = torch.randperm(length)
        else:
            perm = torch.randperm(length, generator=generator, device=generator.device).cpu()
        masks[row] = leading[row][perm.to(device)]
    return counts, masks


def stratified_mask_plan(
    answer_len: int, num_samples: int, seed: int = 0
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Deterministic low-variance design (a deviation from the official estimator): (counts (n,), masks (n, L)).

    Counts are the midpoints of n equal slices of 1..L (exactly uniform when L divides n). The samples of one count
    are cut into rounds of at most L; round r takes cyclic windows, at evenly spaced offsets, over permutation r drawn
    from `torch.Generator().manual_seed(seed)`. A window of fixed positions under a uniform permutation is a uniform
    subset of its size, so each sample is distributed as in the official estimator given its count, while a full
    round masks every position equally often (lower variance). More samples use more permutations: the estimate
    converges to the exact expectation.
    """
    length, n = answer_len, num_samples
    generator = torch.Generator().manual_seed(seed)
    counts = torch.tensor([1 + ((2 * j + 1) * length) // (2 * n) for j in range(n)], dtype=torch.long)
    rows_per_count = [(counts == count).nonzero().flatten().tolist() for count in range(1, length + 1)]
    rounds = max(-(-len(rows) // length) for rows in rows_per_count)
    perms = [torch.randperm(length, generator=generator) for _ in range(rounds)]
    masks = torch.zeros(n, length, dtype=torch.bool)
    for count, rows in enumerate(rows_per_count, start=1):
        for r in range(0, len(rows), length):
            chunk = rows[r : r + length]
            for i, row in enumerate(chunk):
                offset = (i * length) // len(chunk)
                masks[row, perms[r // length][[(offset + t) % length for t in range(count)]]] = True
    return counts, masks


def exact_mask_plan(answer_len: int) -> tuple[torch.LongTensor, torch.BoolTensor, torch.Tensor]:
    """Every non-empty mask set with its probability under the estimator: P(S) = 1 / (L * C(L, |S|))."""
    length = answer_len
    masks, counts, probs = [], [], []
    for count in range(1, length + 1):
        for subset in combinations(range(length), count):
            row = torch.zeros(length, dtype=torch.bool)
            row[list(subset)] = True
            masks.append(row)
            counts.append(count)
            probs.append(1.0 / (length * math.comb(length, count)))
    return torch.tensor(counts), torch.stack(masks), torch.tensor(probs, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# The official estimator, one pair


def _cfg_logits(model, x: torch.Tensor, prompt_len: int, cfg_scale: float, mask_id: int) -> torch.Tensor:
    """Logits of `x`; with CFG the prompt columns are masked in a second copy (the shared CFG helper)."""
    prompt_cols = torch.arange(x.shape[1], device=x.device) < prompt_len
    return classifier_free_guidance(lambda ids, mask: model(ids).logits, x, prompt_cols, cfg_scale, mask_id)


@torch.no_grad()
def log_likelihood(
    model,
    prompt_ids: IdsLike,
    answer_ids: IdsLike,
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
    method: str = "mc",
    seed: int = 0,
) -> float:
    """Monte-Carlo ELBO of log p(answer | prompt) (official estimator; see the module docstring).

    Draws its random numbers exactly like the official `get_log_likelihood` (one `randint` on the model device, then
    `batch_size` CPU `randperm`s per iteration), so `torch.manual_seed(s)` before both gives the same value.
    `generator` replaces the global generators for all draws. `method="exact"`/`"stratified"` use the deterministic
    estimators of `batch_log_likelihood` (deviations from the official one).
    """
    if method != "mc":
        return batch_log_likelihood(
            model, [(prompt_ids, answer_ids)], mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale,
            mask_token_id=mask_token_id, method=method, seed=seed,
        )[0]  # fmt: skip
    vocab_size = _vocab_size(model)
    prompt, answer = _as_ids(prompt_ids, "prompt_ids", vocab_size), _as_ids(answer_ids, "answer_ids", vocab_size)
    mask_id = resolve_mask_token_id(model, mask_token_id)
    _check_settings(mc_num, batch_size, cfg_scale, method)
    _check_pair(prompt, answer, mask_id)
    device = model_device(model)
    prompt_len, answer_len = prompt.numel(), answer.numel()
    seq = torch.cat([prompt, answer]).to(device)[None, :].repeat(batch_size, 1)
    losses = []
    for _ in range(mc_num // batch_size):
        counts, answer_masks = official_mask_draw(answer_len, batch_size, device, generator)
        masked = F.pad(answer_masks, (prompt_len, 0), value=False)
        noisy = torch.where(masked, mask_id, seq)
        p_mask = (counts / answer_len)[:, None]
        logits = _cfg_logits(model, noisy, prompt_len, cfg_scale, mask_id)
        labels = torch.where(masked, seq, -100)
        # (1 / batch_size) sum over rows of sum(CE / p_mask): the diffusion loss with n_i = 1
        loss = masked_diffusion_loss(logits, labels, p_mask, normalizer=torch.ones(batch_size, device=device))
        losses.append(loss.item())
    return -sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------------------------------
# Batched scoring


@dataclass
class _Plan:
    """The rows to score for one pair: answer masks and the weight of each row's sum of CE / p_mask."""

    prompt: torch.Tensor
    answer: torch.Tensor
    counts: torch.Tensor  # (n,)
    masks: torch.Tensor  # (n, L) bool, CPU
    weights: torch.Tensor  # (n,) float64: value = -sum_r weights[r] * sum_{masked} CE / p_mask
    group: int  # rows per independent estimate (stderr); 0 = deterministic


def _make_plan(prompt, answer, method, mc_num, batch_size, seed, max_exact_len, device, generator) -> _Plan:
    length = answer.numel()
    if method == "mc":
        draws = [official_mask_draw(length, batch_size, device, generator) for _ in range(mc_num // batch_size)]
        counts = torch.cat([c.cpu() for c, _ in draws])
        masks = torch.cat([m.cpu() for _, m in draws])
        return _Plan(prompt, answer, counts, masks, torch.full((len(counts),), 1.0 / len(counts), dtype=torch.float64),
                     batch_size)  # fmt: skip
    if method == "stratified":
        counts, masks = stratified_mask_plan(length, mc_num, seed)
        return _Plan(prompt, answer, counts, masks, torch.full((mc_num,), 1.0 / mc_num, dtype=torch.float64), 0)
    if length > max_exact_len:
        raise ValueError(
            f"method='exact' enumerates 2^L - 1 mask sets; answer length {length} > max_exact_len ({max_exact_len})."
        )
    counts, masks, probs = exact_mask_plan(length)
    return _Plan(prompt, answer, counts, masks, probs, 0)


def _masked_logits(model, x, attention_mask, keep: torch.Tensor) -> torch.Tensor:
    """Logits (n, vocab) of the positions where the boolean `keep` (b, l) is true, row-major: every family's LM takes
    it as `logits_to_keep` and runs its head on those hidden states only (also under peft or as remote code)."""
    return model(x, attention_mask=attention_mask, logits_to_keep=keep).logits


def _score_plans(model, plans, cfg_scale, mask_id, pad_id, rows_per_forward, device) -> list[torch.Tensor]:
    """Sum of CE / p_mask over the masked positions of every planned row (float64, one tensor per plan).

    Rows are sorted longest first (memory errors show up at once), packed `rows_per_forward` per forward, right-padded
    and masked out with an attention mask when their lengths differ; CFG adds the prompt-masked copy of each row.
    """
    items = [(p, r) for p, plan in enumerate(plans) for r in range(len(plan.counts))]
    items.sort(key=lambda item: (-(plans[item[0]].prompt.numel() + plans[item[0]].answer.numel()), item))
    row_loss = [torch.zeros(len(plan.counts), dtype=torch.float64) for plan in plans]
    for start in range(0, len(items), rows_per_forward):
        chunk = items[start : start + rows_per_forward]
        lengths = [plans[p].prompt.numel() + plans[p].answer.numel() for p, _ in chunk]
        width = max(lengths)
        targets_x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        prompt_cols = torch.zeros(len(chunk), width, dtype=torch.bool)
        masked = torch.zeros(len(chunk), width, dtype=torch.bool)
        p_mask = torch.ones(len(chunk), dtype=torch.float32)
        for i, (p, r) in enumerate(chunk):
            plan = plans[p]
            prompt_len, length = plan.prompt.numel(), plan.answer.numel()
            targets_x[i, : lengths[i]] = torch.cat([plan.prompt, plan.answer])
            masked[i, prompt_len : prompt_len + length] = plan.masks[r]
            prompt_cols[i, :prompt_len] = True
            p_mask[i] = plan.counts[r] / length
        x = torch.where(masked, mask_id, targets_x)
        attention_mask = None
        if min(lengths) != width:
            attention_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long().to(device)
        rows, cols = masked.nonzero(as_tuple=True)
        x, rows_d, keep = x.to(device), rows.to(device), masked.to(device)

        def logits_fn(ids, mask, keep=keep, n=x.shape[0]):
            doubled = ids.shape[0] != n  # CFG doubled the batch: the same positions in the prompt-masked copy
            return _masked_logits(model, ids, mask, torch.cat([keep, keep]) if doubled else keep)

        logits = classifier_free_guidance(logits_fn, x, prompt_cols.to(device), cfg_scale, mask_id, attention_mask)
        token_loss = F.cross_entropy(logits, targets_x[rows, cols].to(device), reduction="none")
        token_loss = (token_loss / p_mask.to(device)[rows_d]).double().cpu()
        per_row = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, rows, token_loss)
        for i, (p, r) in enumerate(chunk):
            row_loss[p][r] = per_row[i]
    return row_loss


@torch.no_grad()
def batch_log_likelihood(
    model,
    pairs: Sequence[tuple[IdsLike, IdsLike]],
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
    method: str = "mc",
    seed: int = 0,
    rows_per_forward: int = 32,
    max_exact_len: int = 12,
    return_stderr: bool = False,
    progress: bool | None = False,
) -> list[float] | tuple[list[float], list[float]]:
    """ELBO of log p(answer | prompt) for each (prompt, answer) pair, computed in few forwards.

    `method="mc"` (default) is the official estimator with its random draws in the order sequential
    `log_likelihood` calls would make them (so the values match those calls up to float rounding: padding and batch
    composition change the last bits). `"stratified"` and `"exact"` are deterministic (see the module docstring).
    Rows of all pairs are sorted by length and packed `rows_per_forward` at a time (CFG doubles a forward's batch);
    rows of different lengths are right-padded and masked out with an attention mask.
    With `return_stderr`, also returns the standard error of each value (mc: over its iterations, NaN for a single
    one; deterministic methods: 0). `progress`: a bar over the pairs (None: only on a terminal).
    """
    from .progress import progress_bar

    mask_id = resolve_mask_token_id(model, mask_token_id)
    _check_settings(mc_num, batch_size, cfg_scale, method)
    _check_positive_int("rows_per_forward", rows_per_forward)
    if method == "exact":
        _check_positive_int("max_exact_len", max_exact_len)
    if isinstance(pairs, (str, bytes, torch.Tensor)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a sequence of (prompt_ids, answer_ids) pairs, got {type(pairs).__name__}.")
    vocab_size = _vocab_size(model)
    device = model_device(model)
    pad_id = _pad_id(model, mask_id)
    plans, row_losses = [], []
    # Pairs are taken in input order, _PAIRS_PER_CHUNK at a time: bounded memory, and the random draws stay in the
    # order of sequential calls.
    bar = progress_bar(len(pairs), "scoring", progress, unit="pair")
    checked = [_as_pair(pair, index, vocab_size) for index, pair in enumerate(pairs)]  # all before any forward
    for index, (prompt, answer) in enumerate(checked):
        _check_pair(prompt, answer, mask_id, index)
    for chunk_start in range(0, len(pairs), _PAIRS_PER_CHUNK):
        chunk_plans = []
        for prompt, answer in checked[chunk_start : chunk_start + _PAIRS_PER_CHUNK]:
            chunk_plans.append(
                _make_plan(prompt, answer, method, mc_num, batch_size, seed, max_exact_len, device, generator)
            )
        plans += chunk_plans
        row_losses += _score_plans(model, chunk_plans, cfg_scale, mask_id, pad_id, rows_per_forward, device)
        bar.update(len(chunk_plans))
    bar.close()

    values, stderrs = [], []
    for plan, losses in zip(plans, row_losses):
        values.append(-float((plan.weights * losses).sum()))
        if plan.group and len(losses) > plan.group:
            per_iteration = losses.view(-1, plan.group).mean(-1)
            stderrs.append(float(per_iteration.std() / math.sqrt(len(per_iteration))))
        else:
            stderrs.append(float("nan") if plan.group else 0.0)
    return (values, stderrs) if return_stderr else values


def _pad_id(model, mask_id: int) -> int:
    """Any in-vocabulary id other than the mask works (padded keys are masked out); prefer the config's pad."""
    config = getattr(model, "config", None)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None and value != mask_id:
            return int(value)
    return 0 if mask_id != 0 else 1


def conditional_perplexity(model, prompt_ids: IdsLike, answer_ids: IdsLike, **kwargs) -> float:
    """exp(-ELBO / answer length): an upper bound on the answer's conditional perplexity (the ELBO is a lower bound).

    Keyword arguments go to `log_likelihood` (mc_num, batch_size, cfg_scale, method, ...).
    """
    answer = _as_ids(answer_ids, "answer_ids")
    return math.exp(-log_likelihood(model, prompt_ids, answer, **kwargs) / max(answer.numel(), 1))


__all__ = [
    "METHODS",
    "batch_log_likelihood",
    "conditional_perplexity",
    "exact_mask_plan",
    "log_likelihood",
    "official_mask_draw",
    "stratified_mask_plan",
]
