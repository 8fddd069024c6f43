"""The LLaDA2.0 sampler (`generation/generation_llada2.py`): golden-exact under `official=True`, greedy and in the
transformers shape by default, batched with left padding."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

LLADA2_DIR = Path(__file__).parent / "fixtures" / "llada2_tiny"
OFFICIAL_NAMES = {"gen_length": "max_new_tokens", "eos_id": "eos_token_id", "mask_id": "mask_token_id",
                  "eos_early_stop": "early_stop"}  # fmt: skip
CASES = json.loads((LLADA2_DIR / "cases.json").read_text())["generate"]
PROMPT = CASES[0]["prompt"][0]
MASK, EOS = 1000, 1001


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(LLADA2_DIR).eval()


def official_kwargs(kwargs: dict) -> dict:
    return {OFFICIAL_NAMES.get(name, name): value for name, value in kwargs.items()}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_mode_is_golden_exact(model, case):
    torch.manual_seed(case["seed"])
    out = model.generate(torch.tensor(case["prompt"]), official=True, **official_kwargs(case["kwargs"]))
    assert out.tolist() == case["expected"]


def greedy_reference(model, prompt, gen_length, block_length, steps, threshold):
    """The LLaDA2 algorithm written out directly, argmax proposal: block-aligned canvas, block-causal prefix forward,
    count schedule per block with the > threshold rule, stop after a block whose answer holds EOS."""
    prompt_len = len(prompt)
    num_blocks = -(-(prompt_len + gen_length) // block_length)
    x = torch.full((1, num_blocks * block_length), MASK)
    x[0, :prompt_len] = torch.tensor(prompt)
    counts = [block_length // steps + (s < block_length % steps) for s in range(steps)]
    for b in range(prompt_len // block_length, num_blocks):
        start, end = b * block_length, (b + 1) * block_length
        allowed = torch.tensor([[j // block_length <= i // block_length for j in range(end)] for i in range(end)])
        for n in counts:
            masked = x[0, start:end] == MASK
            if not masked.any():
                break
            with torch.no_grad():
                logits = model(x[:, :end], attention_mask=allowed[None, None], position_ids=torch.arange(end)[None])
            probs = F.softmax(logits.logits[0, start:end], -1)
            conf, tokens = probs.max(-1)
            conf = torch.where(masked, conf, -torch.inf)
            chosen = conf > threshold
            if chosen.sum() < n:
                chosen = torch.zeros_like(masked)
                chosen[conf.topk(min(n, int(masked.sum()))).indices] = True
            x[0, start:end] = torch.where(chosen, tokens, x[0, start:end])
        if (x[0, prompt_len:end] == EOS).any():
            break
    return x[0, : prompt_len + gen_length].tolist()


@pytest.mark.parametrize(("gen_length", "block_length", "steps", "threshold"), [(16, 8, 8, 0.95), (20, 8, 3, 0.3)])
def test_default_is_greedy_in_transformers_shape(model, gen_length, block_length, steps, threshold):
    kwargs = dict(max_new_tokens=gen_length, block_length=block_length, steps=steps, threshold=threshold)
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outs.append(model.generate(torch.tensor([PROMPT]), **kwargs))
    assert outs[0].tolist() == outs[1].tolist()  # temperature 0 is greedy: no seed dependence
    assert outs[0].shape == (1, len(PROMPT) + gen_length) and outs[0][0, : len(PROMPT)].tolist() == PROMPT
    assert outs[0][0].tolist() == greedy_reference(model, PROMPT, gen_length, block_length, steps, threshold)


def test_official_temperature_zero_samples_default_does_not(model):
    kwargs = dict(max_new_tokens=16, block_length=8, steps=8, temperature=0.0)
    official = set()
    for seed in range(4):
        torch.manual_seed(seed)
        official.add(tuple(model.generate(torch.tensor([PROMPT]), official=True, **kwargs)[0].tolist()))
    assert len(official) > 1  # the official quirk: multinomial sampling at temperature 0
    greedy = set()
    for seed in range(4):
        torch.manual_seed(seed)
        greedy.add(tuple(model.generate(torch.tensor([PROMPT]), **kwargs)[0].tolist()))
    assert len(greedy) == 1


def test_default_pads_after_eos_and_official_cuts(model):
    kwargs = dict(max_new_tokens=16, block_length=8, steps=8, eos_token_id=587)
    out = model.generate(torch.tensor([PROMPT]), pad_token_id=EOS, **kwargs)[0, len(PROMPT) :].tolist()
    first = out.index(587)
    assert out[first + 1 :] == [EOS] * (15 - first) and first < 15
    torch.manual_seed(11)
    official = model.generate(torch.tensor([PROMPT]), official=True, **kwargs)[0].tolist()
    assert official[-1] == 587 and 587 not in official[:-1] and len(official) < 16


def test_left_padded_batch_gives_each_row_its_alone_answer(model):
    """Rows whose padding is a whole number of blocks see the same block grid as alone: same answer."""
    long_prompt = [994, 27, 742, 995, 356, 951, 274, 455, 6, 599, 292, 523, 801, 840, 292]  # 15 = 7 + one block
    kwargs = dict(max_new_tokens=16, block_length=8, steps=4, threshold=0.5)
    alone = [model.generate(torch.tensor([p]), **kwargs)[0, len(p) :].tolist() for p in (PROMPT, long_prompt)]
    ids = torch.tensor([[EOS] * 8 + PROMPT, long_prompt])
    mask = torch.tensor([[0] * 8 + [1] * 7, [1] * 15])
    batch = model.generate(ids, attention_mask=mask, pad_token_id=EOS, **kwargs)
    assert batch[:, 15:].tolist() == alone


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(cfg_scale=1.0), "cfg_scale"),
        (dict(remask_budget=2), "remask_budget"),
        (dict(minimal_topk=0), "minimal_topk"),
        (dict(minimal_topk=17), "minimal_topk"),
        (dict(official="yes"), "official"),
    ],
)
def test_unsupported_options_are_rejected(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=16, block_length=8, steps=8, **kwargs)


def test_official_mode_is_batch_one(model):
    with pytest.raises(ValueError, match="batch 1"):
        model.generate(torch.tensor([PROMPT, PROMPT]), official=True, max_new_tokens=8, block_length=8, steps=8)
