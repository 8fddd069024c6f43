"""The exact block KV cache of the LLaDA2.0 sampler (`block_cache`, on by default): token for token the uncached
sampler (which recomputes the prefix every step, as the official code does), on the golden model."""

import json
from pathlib import Path

import pytest
import torch
from conftest import forward_depth, fp32_tol
from transformers import AutoModel

import llada_hf  # noqa: F401  (registers the Auto classes)

LLADA2_DIR = Path(__file__).parent / "fixtures" / "llada2_tiny"
OFFICIAL_NAMES = {"gen_length": "max_new_tokens", "eos_id": "eos_token_id", "mask_id": "mask_token_id",
                  "eos_early_stop": "early_stop"}  # fmt: skip
CASES = json.loads((LLADA2_DIR / "cases.json").read_text())["generate"]
PROMPT = CASES[0]["prompt"][0]
LONG = [994, 27, 742, 995, 356, 951, 274, 455, 6, 599, 292, 523, 801, 840, 292]
MASK, EOS = 1000, 1001


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(LLADA2_DIR).eval()


def run(model, ids, seed=0, **kwargs):
    """(cached, uncached) generate() outputs from the same seed; records the forwarded widths of each run."""
    outs, widths = [], []
    for block_cache in (True, False):
        seen = []
        hook = model.model.embed_tokens.register_forward_hook(
            lambda m, args, out, seen=seen: seen.append(args[0].shape[1])
        )
        try:
            torch.manual_seed(seed)
            outs.append(model.generate(ids, block_cache=block_cache, **kwargs))
        finally:
            hook.remove()
        widths.append(seen)
    return outs, widths


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_golden_cases_cached_and_uncached(model, case):
    kwargs = {OFFICIAL_NAMES.get(name, name): value for name, value in case["kwargs"].items()}
    (cached, uncached), (w_cached, w_uncached) = run(model, torch.tensor(case["prompt"]), case["seed"], official=True,
                                                     **kwargs)  # fmt: skip
    assert cached.tolist() == case["expected"] == uncached.tolist()
    assert len(w_cached) == len(w_uncached)  # same number of forwards
    if len(set(w_uncached)) > 1:  # more than one block run: the finished ones are not run again
        assert sum(w_cached) < sum(w_uncached)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_new_tokens=24, block_length=8, steps=8, threshold=0.95),
        dict(max_new_tokens=20, block_length=8, steps=3, threshold=0.3),
        dict(max_new_tokens=32, block_length=4, steps=4, threshold=None),
        dict(max_new_tokens=24, block_length=8, steps=8, do_sample=True, temperature=0.8, top_k=50, top_p=0.9),
        dict(max_new_tokens=24, block_length=8, steps=8, eos_token_id=587, early_stop=True),
    ],
)
def test_cached_equals_uncached_token_for_token(model, kwargs):
    (cached, uncached), (w_cached, w_uncached) = run(model, torch.tensor([PROMPT]), seed=3, **kwargs)
    assert cached.tolist() == uncached.tolist()
    block_length = kwargs["block_length"]
    assert max(w_cached[1:]) <= 2 * block_length  # after the prompt's forward: at most the previous + current block
    assert sum(w_cached) < sum(w_uncached)


def test_cached_scores_equal_uncached(model):
    kwargs = dict(max_new_tokens=16, block_length=8, steps=4, return_dict_in_generate=True, output_logits=True)
    (cached, uncached), _ = run(model, torch.tensor([PROMPT]), **kwargs)
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    for a, b in zip(cached.logits, uncached.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=fp32_tol(b, forward_depth(model.config, len(PROMPT) + 16)))


@pytest.mark.parametrize("pad", [8, 3])
def test_cached_padded_batch_with_rows_leaving(model, pad):
    """Left padding (whole blocks or not) and rows that stop early (EOS after a block): the cache drops their rows."""
    ids = torch.tensor([[EOS] * pad + PROMPT, LONG[: 7 + pad], [EOS] * pad + PROMPT[::-1]])
    mask = torch.tensor([[0] * pad + [1] * 7, [1] * (7 + pad), [0] * pad + [1] * 7])
    kwargs = dict(max_new_tokens=24, block_length=8, steps=4, threshold=0.5, pad_token_id=EOS)
    for extra in (dict(), dict(eos_token_id=587, early_stop=True), dict(eos_token_id=[587, 292])):
        (cached, uncached), _ = run(model, ids, attention_mask=mask, **kwargs, **extra)
        assert cached.tolist() == uncached.tolist()


def test_block_cache_must_be_a_bool(model):
    with pytest.raises(ValueError, match="block_cache"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=8, block_length=8, steps=8, block_cache="yes")


def test_padded_rows_get_alone_answers_whatever_their_padding(model):
    """Per-row alignment: rows whose padding is not a whole number of blocks are run on their own block grid."""
    prompts = [PROMPT, LONG[:12], LONG[:9], LONG]  # padding 8, 3, 6, 0 columns: three alignments
    kwargs = dict(max_new_tokens=16, block_length=8, steps=4, threshold=0.5, pad_token_id=EOS)
    alone = [model.generate(torch.tensor([p]), **kwargs)[0, len(p) :].tolist() for p in prompts]
    width = max(map(len, prompts))
    ids = torch.tensor([[EOS] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batch = model.generate(ids, attention_mask=mask, **kwargs)
    assert batch.shape == (4, width + 16) and torch.equal(batch[:, :width], ids)
    assert batch[:, width:].tolist() == alone
    two = model.generate(ids, attention_mask=mask, num_return_sequences=2, do_sample=True, **kwargs)
    assert two.shape == (8, width + 16) and torch.equal(two[:, :width], ids.repeat_interleave(2, dim=0))
    with pytest.warns(UserWarning, match="share one block grid"):
        out = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **kwargs)
    assert out.sequences.shape == batch.shape
