"""LLaDA2.1 token editing (`sampler="llada2.1"` of `generation/generation_llada2.py`): golden-exact under
`official=True` (tokens and forwards), the official additive 0/1 mask in the forward, and in the default mode an exact
block cache under editing, edits that really happen, and clear errors for the editing fields."""

import json
from pathlib import Path

import pytest
import torch
from llada_hf.generation.generation_llada2 import LLaDA2GenerationConfig, TokenEditing, block_causal_mask
from transformers import AutoModel

import llada_hf  # noqa: F401  (registers the Auto classes)

LLADA21_DIR = Path(__file__).parent / "fixtures" / "llada21_tiny"
OFFICIAL_NAMES = {"gen_length": "max_new_tokens", "eos_id": "eos_token_id", "mask_id": "mask_token_id",
                  "eos_early_stop": "early_stop"}  # fmt: skip
DATA = json.loads((LLADA21_DIR / "cases.json").read_text())
CASES = DATA["generate"]
PROMPT = CASES[0]["prompt"][0]
LONG = [994, 27, 742, 995, 356, 951, 274, 455, 6, 599, 292, 523, 801, 840, 292]
MASK, EOS = 1000, 1001
Q = dict(threshold=0.7, editing_threshold=0.5, max_post_steps=16)
S = dict(threshold=0.5, editing_threshold=0.0, max_post_steps=16)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(LLADA21_DIR).eval()


def official_kwargs(kwargs: dict) -> dict:
    return {OFFICIAL_NAMES.get(name, name): value for name, value in kwargs.items()}


def counted(model, fn):
    """(fn's result, inner-model forwards during it): a hook on `model.model`, as the cases count them."""
    calls = []
    hook = model.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        return fn(), len(calls)
    finally:
        hook.remove()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_mode_is_golden_exact(model, case):
    def run():
        torch.manual_seed(case["seed"])
        return model.generate(
            torch.tensor(case["prompt"]), official=True, sampler="llada2.1", **official_kwargs(case["kwargs"])
        )

    out, forwards = counted(model, run)
    assert out.tolist() == case["expected"]
    assert forwards == case["n_forward"] == sum(calls for _, calls in case["forward_calls_per_block"])


def test_official_nfe_is_reported(model):
    case = next(c for c in CASES if c["name"] == "s_b8")
    torch.manual_seed(case["seed"])
    out = model.generate(torch.tensor(case["prompt"]), official=True, sampler="llada2.1", return_dict_in_generate=True,
                         **official_kwargs(case["kwargs"]))  # fmt: skip
    assert out.sequences.tolist() == case["expected"] and out.nfe == case["n_forward"]


@pytest.mark.parametrize("name", ["mask_01", "mask_0_neginf"])
def test_forward_block_mask_logits(model, name):
    """The model forward takes the official float 0/1 additive mask (and its .log(), the 2.0 mask) as 4-D masks."""
    case = DATA["forward_block_mask"]
    ids = torch.tensor(case["input_ids"])
    length = ids.shape[1]
    mask = block_causal_mask(length, 8).to(torch.bfloat16)[None, None]  # what the 2.1 generate() passes
    mask = mask.float() if name == "mask_01" else mask.float().log()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(length)[None]).logits.double()
    expected = case[name]
    for (row, col), values in zip(expected["logits_sample"]["positions"], expected["logits_sample"]["values"]):
        assert (logits[row, col] - torch.tensor(values, dtype=torch.float64)).abs().max() <= 1e-5, (row, col)
    assert logits.argmax(-1).tolist() == expected["argmax"]
    assert abs(float(logits.sum()) - expected["logits_sum"]) < 1e-2


def test_masks_differ_so_the_official_mask_is_not_block_causal():
    a, b = DATA["forward_block_mask"]["mask_01"], DATA["forward_block_mask"]["mask_0_neginf"]
    assert a["logits_sum"] != b["logits_sum"]


# -- default mode ---------------------------------------------------------------------------------------------------


def run_cache(model, ids, seed=0, **kwargs):
    """(cached, uncached) outputs from the same seed and the forwarded widths of each run."""
    outs, widths = [], []
    for block_cache in (True, False):
        seen = []
        hook = model.model.embed_tokens.register_forward_hook(lambda m, a, o, seen=seen: seen.append(a[0].shape[1]))
        try:
            torch.manual_seed(seed)
            outs.append(model.generate(ids, sampler="llada2.1", block_cache=block_cache, **kwargs))
        finally:
            hook.remove()
        widths.append(seen)
    return outs, widths


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_new_tokens=24, block_length=8, **Q),
        dict(max_new_tokens=24, block_length=8, **S),
        dict(max_new_tokens=21, block_length=16, **S),
        dict(max_new_tokens=20, block_length=8, threshold=0.95, editing_threshold=0.3, num_to_transfer=3),
        dict(max_new_tokens=24, block_length=8, do_sample=True, temperature=0.8, top_k=50, top_p=0.9, **Q),
        dict(max_new_tokens=24, block_length=4, eos_token_id=895, early_stop=True, **S),
    ],
    ids=["q_b8", "s_b8", "s_b16", "count3", "sampled_q", "early_stop_s"],
)
@pytest.mark.parametrize("prompt", [PROMPT, LONG], ids=["short", "long"])
def test_block_cache_stays_exact_under_editing(model, kwargs, prompt):
    (cached, uncached), (w_cached, w_uncached) = run_cache(model, torch.tensor([prompt]), seed=5, **kwargs)
    assert cached.tolist() == uncached.tolist()
    assert len(w_cached) == len(w_uncached)
    if len(set(w_uncached)) > 1:  # several blocks: the finished ones are not run again
        assert sum(w_cached) < sum(w_uncached)


def test_editing_changes_committed_tokens(model):
    """S mode rewrites tokens: the answer differs from editing off, and some step changes a non-mask token."""
    ids = torch.tensor([PROMPT])
    common = dict(max_new_tokens=24, block_length=8, threshold=0.5, sampler="llada2.1", return_dict_in_generate=True,
                  output_history=True)  # fmt: skip
    edited = model.generate(ids, editing_threshold=0.0, **common)
    plain = model.generate(ids, editing_threshold=1.0, **common)
    assert edited.sequences.tolist() != plain.sequences.tolist()
    rewrites = 0
    for before, after in zip(edited.history, edited.history[1:]):
        decided = (before != MASK) & (after != MASK)
        rewrites += int((decided & (before != after)).sum())
    assert rewrites > 0
    for before, after in zip(plain.history, plain.history[1:]):  # editing off: a decided token never changes
        assert not bool(((before != MASK) & (before != after)).any())


def test_batched_rows_get_their_alone_answers(model):
    """Rows whose block closes earlier stop changing (their step is undone) while the others run on."""
    kwargs = dict(max_new_tokens=16, block_length=8, sampler="llada2.1", **S)
    prompts = [PROMPT, LONG[7:14]]  # in S mode their blocks close after different numbers of forwards
    alone = [model.generate(torch.tensor([p]), **kwargs)[0].tolist() for p in prompts]
    batch = model.generate(torch.tensor(prompts), **kwargs)
    assert batch.tolist() == alone


def test_default_mode_never_proposes_the_mask_id(model):
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=24, block_length=8, sampler="llada2.1", **S)
    assert MASK not in out[0, len(PROMPT) :].tolist()


def test_token_editing_part():
    tokens = torch.tensor([[5, 6, MASK, 8, 9]])
    proposal = torch.tensor([[1, 6, 3, 2, 4]])
    probs = torch.tensor([[0.9, 0.99, 0.99, 0.5, 0.6]])
    fixed = torch.tensor([[True, False, True, False, False]])  # prompt column 0, mask column 2
    columns, new, count = TokenEditing(0.5)(tokens, proposal, probs, fixed)
    assert columns.tolist() == [[False, False, False, False, True]]  # 0.5 is not > 0.5; 6 == 6 is no edit
    assert new.tolist() == [[5, 6, MASK, 8, 4]] and count.tolist() == [1]
    assert TokenEditing(1.0)(tokens, proposal, probs, fixed)[2].tolist() == [0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="llada2.2"), "Unknown sampler"),
        (dict(editing_threshold=0.5), "sampler='llada2.1'"),
        (dict(max_post_steps=4), "sampler='llada2.1'"),
        (dict(num_to_transfer=2), "sampler='llada2.1'"),
        (dict(sampler="llada2.1", editing_threshold=1.5), "editing_threshold"),
        (dict(sampler="llada2.1", editing_threshold="0.5"), "editing_threshold"),
        (dict(sampler="llada2.1", max_post_steps=-1), "max_post_steps"),
        (dict(sampler="llada2.1", max_post_steps=2.0), "max_post_steps"),
        (dict(sampler="llada2.1", num_to_transfer=0), "num_to_transfer"),
        (dict(sampler="llada2.1", num_to_transfer=True), "num_to_transfer"),
        (dict(sampler="llada2.1", compile=True), "compile"),
    ],
)
def test_bad_editing_fields_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=8, block_length=8, **kwargs)
    with pytest.raises(ValueError, match=message):
        LLaDA2GenerationConfig(**kwargs).validate()


def test_generation_config_round_trip(tmp_path):
    config = LLaDA2GenerationConfig(sampler="llada2.1", editing_threshold=0.5, max_post_steps=16)
    config.save_pretrained(tmp_path)
    loaded = LLaDA2GenerationConfig.from_pretrained(tmp_path)
    assert (loaded.sampler, loaded.editing_threshold, loaded.max_post_steps) == ("llada2.1", 0.5, 16)


def test_stopping_criteria_see_only_finished_blocks(model):
    """A criterion firing on a token of the current block would cut an answer that editing may still change: it
    fires only once the block is finished, so the kept prefix is exactly the unstopped answer's."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    kwargs = dict(max_new_tokens=24, block_length=8, sampler="llada2.1", **S)
    full = model.generate(torch.tensor([PROMPT]), **kwargs)[0].tolist()
    answer = full[len(PROMPT) :]
    token = answer[9]  # in the second block

    class Seen(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, len(PROMPT) :] == token).any(-1)

    stopped = model.generate(torch.tensor([PROMPT]), stopping_criteria=StoppingCriteriaList([Seen()]), **kwargs)
    cut = answer.index(token) + 1
    assert stopped[0, len(PROMPT) : len(PROMPT) + cut].tolist() == answer[:cut]
    assert stopped[0, len(PROMPT) + cut :].tolist() == [EOS] * (len(answer) - cut)
