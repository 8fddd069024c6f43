"""Likelihood scoring (Monte-Carlo ELBO) and the lm-eval backend.

Reference values come from the official code (golden cases) or are computed here independently: the exact
expectation of the estimator by enumerating every mask set with direct model calls.
"""

import itertools
import json
import math
import subprocess
import sys
from functools import partial

import pytest
import torch
from conftest import forward_depth, fp32_tol, tiny_model

from llada_hf.likelihood import (
    batch_log_likelihood,
    conditional_perplexity,
    exact_mask_plan,
    log_likelihood,
    official_mask_draw,
    stratified_mask_plan,
)

MASK_ID = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["golden_tiny", "llada2_tiny", "lladamoe_tiny"])
def test_every_family_runs_the_head_on_the_masked_positions_only(family):
    """One likelihood path for every family: the LM head sees only the masked positions, and their logits are the
    full forward's."""
    from pathlib import Path

    from transformers import AutoModel

    from llada_hf.likelihood import _masked_logits

    model = AutoModel.from_pretrained(Path(__file__).parent / "fixtures" / family).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 10), generator=generator)
    keep = torch.rand(2, 10, generator=generator) < 0.4
    head_rows = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[:-1]))
    with torch.no_grad():
        got = _masked_logits(model, ids, None, keep)
    handle.remove()
    assert head_rows == [torch.Size([int(keep.sum())])]
    with torch.no_grad():
        full = model(ids).logits
    torch.testing.assert_close(got, full[keep])


# ---------------------------------------------------------------------------------------------------------------------
# Independent reference: the estimator's exact expectation, by enumeration with plain model calls


@torch.no_grad()
def enumerate_expectation(model, prompt, answer, mask_id=MASK_ID, weight_by_inverse_p=True):
    """sum over non-empty S of P(S) * (L / |S|) * sum_{i in S} log p(a_i | masked input), P(S) = 1 / (L C(L, |S|))."""
    seq = torch.tensor(prompt + answer)
    prompt_len, length = len(prompt), len(answer)
    total = 0.0
    for count in range(1, length + 1):
        for subset in itertools.combinations(range(length), count):
            x = seq.clone()
            x[[prompt_len + i for i in subset]] = mask_id
            log_probs = torch.log_softmax(model(x[None]).logits[0].double(), dim=-1)
            value = sum(log_probs[prompt_len + i, answer[i]].item() for i in subset)
            scale = length / count if weight_by_inverse_p else 1.0
            total += scale * value / (length * math.comb(length, count))
    return total


# ---------------------------------------------------------------------------------------------------------------------
# The official estimator


@pytest.mark.parametrize("run_index", [0, 1, 2])
def test_golden_likelihood_runs(golden_model, golden_cases, run_index):
    case = golden_cases["likelihood"]
    run = case["runs"][run_index]
    kwargs = dict(mc_num=run["mc_num"], batch_size=run["batch_size"], cfg_scale=run["cfg_scale"])
    torch.manual_seed(run["seed"])
    value = log_likelihood(golden_model, case["prompt"], case["answer"], **kwargs)
    depth = forward_depth(golden_model.config, len(case["prompt"]) + len(case["answer"]), vocab=True) + run["mc_num"]
    assert value == pytest.approx(run["expected"], rel=0, abs=fp32_tol(run["expected"], depth))
    # The same draws from an explicit generator, and from the batched scorer.
    generator = torch.Generator().manual_seed(run["seed"])
    assert log_likelihood(golden_model, case["prompt"], case["answer"], generator=generator, **kwargs) == value
    torch.manual_seed(run["seed"])
    batched = batch_log_likelihood(golden_model, [(case["prompt"], case["answer"])], **kwargs)
    assert batched[0] == pytest.approx(run["expected"], rel=0, abs=fp32_tol(run["expected"], depth))


def test_official_mask_draw_is_stratified_and_exact_in_count():
    torch.manual_seed(0)
    for length, rows in [(5, 5), (7, 3), (4, 16), (1, 4), (6, 6)]:
        counts, masks = official_mask_draw(length, rows, "cpu")
        assert counts.shape == (rows,) and masks.shape == (rows, length)
        assert bool(((counts >= 1) & (counts <= length)).all())
        assert masks.sum(-1).tolist() == counts.tolist()
        if rows == length:  # evenly spaced counts, one of each
            assert sorted(counts.tolist()) == list(range(1, length + 1))


def test_batched_matches_sequential_calls(monkeypatch):
    """Same seed: one batched call == log_likelihood on each pair in turn (rows of unequal lengths share forwards)."""
    import llada_hf.likelihood

    monkeypatch.setattr(llada_hf.likelihood, "_PAIRS_PER_CHUNK", 3)  # 4 pairs: two chunks
    model = tiny_model(1)
    pairs = [([5, 6, 7], [8, 9]), ([10] * 9, [11, 12, 13, 14, 15]), ([], [16, 17, 18]), ([19, 20], [21])]
    for cfg_scale in (0.0, 1.5):
        kwargs = dict(mc_num=8, batch_size=4, cfg_scale=cfg_scale)
        prompt_pairs = [p for p in pairs if p[0]] if cfg_scale else pairs
        torch.manual_seed(7)
        sequential = [log_likelihood(model, p, a, **kwargs) for p, a in prompt_pairs]
        torch.manual_seed(7)
        batched = batch_log_likelihood(model, prompt_pairs, rows_per_forward=5, **kwargs)
        tol = fp32_tol(max(sequential, key=abs), forward_depth(model.config, 14, vocab=True) + 8)  # longest pair: 14
        assert batched == pytest.approx(sequential, rel=0, abs=tol)
        assert len(set(round(v, 3) for v in batched)) == len(batched)


def test_estimator_mean_converges_to_exact_expectation(golden_model):
    """128 independent estimates (mc_num 16): their mean is within 3 standard errors of the enumerated expectation.

    batch_size = L makes every iteration's counts exactly 1..L; with batch_size > L the official rounding
    (half-to-even) over-weights some counts, e.g. L = 4, batch_size = 16 draws counts 2 and 4 with probability 5/16.
    """
    prompt, answer = [208, 965, 986, 422, 769, 205], [820, 394, 432, 307]
    exact = enumerate_expectation(golden_model, prompt, answer)
    torch.manual_seed(0)
    estimates = torch.tensor(
        batch_log_likelihood(golden_model, [(prompt, answer)] * 128, mc_num=16, batch_size=4, rows_per_forward=512),
        dtype=torch.float64,
    )
    stderr = float(estimates.std() / math.sqrt(len(estimates)))
    assert abs(float(estimates.mean()) - exact) <= 3 * stderr
    # The check has power: dropping the 1/p_mask weights moves the expectation by hundreds of standard errors.
    assert abs(enumerate_expectation(golden_model, prompt, answer, weight_by_inverse_p=False) - exact) > 20 * stderr

    # Deterministic methods: "exact" is the expectation; "stratified" is close, and closer than one official run.
    depth = forward_depth(golden_model.config, len(prompt) + len(answer), vocab=True) + 2 ** len(answer)  # all masks
    assert log_likelihood(golden_model, prompt, answer, method="exact") == pytest.approx(
        exact, rel=0, abs=fp32_tol(exact, depth)
    )
    stratified = log_likelihood(golden_model, prompt, answer, method="stratified", mc_num=16)
    assert stratified == log_likelihood(golden_model, prompt, answer, method="stratified", mc_num=16)
    assert abs(stratified - exact) < float(estimates.std())


def test_exact_and_stratified_plans():
    counts, masks, probs = exact_mask_plan(4)
    assert len(counts) == 15 and float(probs.sum()) == pytest.approx(1.0)
    assert masks.sum(-1).tolist() == counts.tolist() and len({tuple(m.tolist()) for m in masks}) == 15
    counts, masks = stratified_mask_plan(5, 20, seed=3)
    assert sorted(counts.tolist()) == sorted(list(range(1, 6)) * 4)
    assert masks.sum(-1).tolist() == counts.tolist()
    # Each count's 4 windows start at distinct offsets: no position is masked more than once per count.
    for count in range(1, 5):
        coverage = masks[counts == count].sum(0)
        assert int(coverage.max()) - int(coverage.min()) <= 1
    again = stratified_mask_plan(5, 20, seed=3)
    assert torch.equal(again[1], masks) and not torch.equal(stratified_mask_plan(5, 20, seed=4)[1], masks)


def test_conditional_perplexity(golden_model):
    prompt, answer = [208, 965, 986], [820, 394, 432]
    exact = enumerate_expectation(golden_model, prompt, answer)
    assert conditional_perplexity(golden_model, prompt, answer, method="exact") == pytest.approx(
        math.exp(-exact / 3), rel=1e-6
    )


def test_errors(golden_model):
    with pytest.raises(ValueError, match="empty"):
        log_likelihood(golden_model, [1, 2], [])
    with pytest.raises(ValueError, match="divisible"):
        log_likelihood(golden_model, [1, 2], [3], mc_num=10, batch_size=4)
    with pytest.raises(ValueError, match="prompt contains the mask token"):
        log_likelihood(golden_model, [1, MASK_ID], [3])
    with pytest.raises(ValueError, match="answer contains the mask token"):
        batch_log_likelihood(golden_model, [([1], [2]), ([1], [3, MASK_ID])])
    with pytest.raises(ValueError, match="method"):
        log_likelihood(golden_model, [1], [2], method="nope")
    with pytest.raises(ValueError, match="max_exact_len"):
        batch_log_likelihood(golden_model, [([1], list(range(2, 20)))], method="exact")
    with pytest.raises(ValueError, match="cfg_scale"):
        log_likelihood(golden_model, [1], [2], cfg_scale=-1.0)


# ---------------------------------------------------------------------------------------------------------------------
# lm-eval backend

WORDS = (" red", " blue", " green", " yellow", "The", " sky", " is", " grass", " sun", " snow", ".")


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """A tiny native checkpoint with a tokenizer saved next to it."""
    from llada_hf.tokenizer import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("llada_eval") / "model"
    tiny_model(3).save_pretrained(path)
    build_tiny_tokenizer(words=WORDS).save_pretrained(path)
    return path


def _encode_pair(tokenizer, context, continuation):
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert whole[: len(ctx)] == ctx
    return ctx, whole[len(ctx) :]


def _write_mc_task(root, docs):
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (root / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {root / 'hf_cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def _mc_docs_with_direct_scores(model, tokenizer):
    """Docs whose labels make the expected accuracy 2/3 given direct (exact-method) scores from our API."""
    docs = [
        {"question": "The sky is", "choices": ["red", "blue", "green"]},
        {"question": "The grass is", "choices": ["red", "blue", "green", "yellow"]},
        {"question": "The sun is", "choices": ["yellow", "blue"]},
    ]
    scores = []
    for doc in docs:
        pairs = [_encode_pair(tokenizer, doc["question"], " " + choice) for choice in doc["choices"]]
        scores.append(batch_log_likelihood(model, pairs, method="exact"))
        best = max(range(len(pairs)), key=lambda i: scores[-1][i])
        doc["label"] = best if len(scores) < 3 else (best + 1) % len(pairs)  # the last doc's label is not the best
    return docs, scores


def test_lm_eval_multiple_choice_task(eval_dir, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModel, AutoTokenizer

    import llada_hf.lm_eval_backend as backend  # registers "llada_hf"

    assert get_model("llada_hf") is backend.LLaDAEvalHarness and issubclass(backend.LLaDAEvalHarness, HFLM)
    model = AutoModel.from_pretrained(eval_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(eval_dir)
    docs, scores = _mc_docs_with_direct_scores(model, tokenizer)
    _write_mc_task(tmp_path, docs)
    results = lm_eval.simple_evaluate(
        model="llada_hf",
        model_args=f"pretrained={eval_dir},dtype=float32,device=cpu,method=exact",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
        batch_size=3,  # rows per forward: the exact method's values do not depend on it
    )
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(2 / 3)
    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    for sample, doc, direct in zip(samples, docs, scores):
        got = [value for value, _ in sample["filtered_resps"]]
        assert got == pytest.approx(
            direct, rel=0, abs=fp32_tol(max(direct, key=abs), forward_depth(model.config, 32, vocab=True))
        )
        assert max(range(len(got)), key=got.__getitem__) == max(range(len(direct)), key=direct.__getitem__)
        assert sample["acc"] == float(max(range(len(direct)), key=direct.__getitem__) == doc["label"])


def test_lm_eval_chat_template_multiple_choice_scores_as_the_api(tmp_path):
    """With --apply_chat_template, lm-eval's multiple choice on the demo model scores each choice as
    `llada_hf.likelihood` does on the prompt generate() sees (same mask draws: stratified, seed 0), while HFLM's own
    split (context + continuation tokenised together) misranks some of the same items."""
    lm_eval = pytest.importorskip("lm_eval")
    import random

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llada_hf.demo import arithmetic_answer, split_pairs
    from llada_hf.lm_eval_backend import LLaDAEvalHarness
    from llada_hf.loading import DEMO_DIR

    rng, docs = random.Random(0), []
    for a, b in split_pairs()[1][:12]:  # held-out sums; wrong choices one or two off
        choices = [arithmetic_answer(a, b), *(f"{a} + {b} = {a + b + d}." for d in (-2, -1, 1) if a + b + d >= 0)]
        label = rng.randrange(len(choices))
        choices.insert(label, choices.pop(0))
        docs.append({"question": f"What is {a} + {b}?", "choices": choices, "label": label})
    _write_mc_task(tmp_path, docs)
    settings = {"mc_num": 4, "method": "stratified", "seed": 0}
    lm = LLaDAEvalHarness(pretrained=str(DEMO_DIR), dtype="float32", device="cpu", batch_size=64, **settings)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["tiny_mc"], apply_chat_template=True, log_samples=True,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )  # fmt: skip
    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])

    def api_scores(encode):
        """Per doc, the API's ELBO of each choice on the (prompt, choice) ids that `encode` gives."""
        out = []
        for doc in docs:
            chat = [{"role": "user", "content": doc["question"]}]
            prompt = lm.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            pairs = [encode(prompt, choice) for choice in doc["choices"]]
            out.append(batch_log_likelihood(lm.model, pairs, **settings))
        return out

    def as_generate_sees(prompt, choice):
        return [lm.tokenizer(text, add_special_tokens=False)["input_ids"] for text in (prompt, choice)]

    def accuracy(scores):
        return sum(max(range(len(s)), key=s.__getitem__) == d["label"] for s, d in zip(scores, docs)) / len(docs)

    direct = api_scores(as_generate_sees)
    hflm = api_scores(partial(HFLM._encode_pair, lm))  # what lm-eval scored before the override
    got = [[value for value, _ in sample["filtered_resps"]] for sample in samples]
    # The same draws on differently packed rows: the forwards' sums run in another order. A choice's score is a sum of
    # log-probabilities whose rounding follows the logits' scale, not the score's: bound each row by its largest score
    # (as the test above does), not relative to each small score.
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True)["input_ids"]
    longest = max(len(chat) + sum(map(len, as_generate_sees(d["question"], c))) for d in docs for c in d["choices"])
    depth = forward_depth(lm.model.config, longest, vocab=True)
    for row, expected in zip(got, direct):
        assert row == pytest.approx(expected, rel=0, abs=fp32_tol(max(expected, key=abs), depth))
    assert results["results"]["tiny_mc"]["acc,none"] == accuracy(direct) == 1.0
    assert accuracy(hflm) < 1.0  # the items are ones the old split got wrong


def _instances(request_type, arguments, task_name="custom_task"):
    from lm_eval.api.instance import Instance

    return [
        Instance(request_type, doc={}, arguments=args, idx=0, metadata=(task_name, i, 1))
        for i, args in enumerate(arguments)
    ]


def test_lm_eval_backend_methods(eval_dir, caplog):
    """loglikelihood (official draws), generate_until (stop sequences) and loglikelihood_rolling, called directly."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model

    import llada_hf.lm_eval_backend as backend

    lm_class = get_model("llada_hf")
    assert lm_class is backend.LLaDAEvalHarness
    lm = lm_class.create_from_arg_string(
        f"pretrained={eval_dir},dtype=float32,device=cpu,mc_num=8,mc_batch_size=4,gen_length=8,steps=4,block_length=4",
        {"batch_size": 3},  # rows per forward: packing does not change the draws
    )
    tok = lm.tokenizer

    # loglikelihood: same seed, same draws as the API on the same pairs in request order.
    requests = [("The sky is", " blue"), ("The sun is ", "yellow"), ("", "The sky")]
    torch.manual_seed(11)
    values = [value for value, greedy in lm.loglikelihood(_instances("loglikelihood", requests))]
    pairs = [_encode_pair(tok, "The sky is", " blue"), _encode_pair(tok, "The sun is", " yellow")]
    pairs.append(([tok.bos_token_id], tok("The sky", add_special_tokens=False)["input_ids"]))
    torch.manual_seed(11)
    expected = batch_log_likelihood(lm.model, pairs, mc_num=8, batch_size=4)
    tol = fp32_tol(
        max(expected, key=abs), forward_depth(lm.model.config, max(len(p) + len(a) for p, a in pairs), vocab=True) + 8
    )
    assert values == pytest.approx(expected, rel=0, abs=tol)

    # generate_until: the sampler's text, cut at the earliest stop sequence.
    prompt = tok("The sky is", add_special_tokens=False)["input_ids"]
    out = lm.model.generate(torch.tensor([prompt]), max_new_tokens=8, steps=4, block_length=4, mask_token_id=MASK_ID)
    full = tok.decode(out[0, len(prompt) :], skip_special_tokens=True)
    assert len(full) > 50
    late, early = full[-8:-4], full[30:34]  # listed late first: the cut is at the earliest match, not the first listed
    cut = min(full.index(late), full.index(early))
    assert cut < full.index(late)
    texts = lm.generate_until(
        _instances("generate_until", [("The sky is", {"until": [late, early]}), ("The sky is", {"until": "zzz"})])
    )
    assert texts == [full[:cut], full]
    # Diffusion settings from --gen_kwargs override the model arguments.
    out = lm.model.generate(torch.tensor([prompt]), max_new_tokens=4, steps=2, block_length=2, mask_token_id=MASK_ID)
    (text,) = lm.generate_until(
        _instances("generate_until", [("The sky is", {"until": [], "gen_length": 4, "steps": 2, "block_length": 2})])
    )
    assert text == tok.decode(out[0, len(prompt) :], skip_special_tokens=True)

    # loglikelihood_rolling: 5 tokens, max_length 4 -> [BOS] + t0..t2, then t1 t2 + t3 t4 (lm-eval's disjoint windows).
    lm._max_length = 4
    text = "The sky is blue."
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    assert len(tokens) == 5
    torch.manual_seed(5)
    (rolling,) = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
    torch.manual_seed(5)
    windows = [([tok.bos_token_id], tokens[:3]), (tokens[1:3], tokens[3:])]
    expected = sum(batch_log_likelihood(lm.model, windows, mc_num=8, batch_size=4))
    tol = fp32_tol(expected, forward_depth(lm.model.config, len(tokens) + 1, vocab=True) + 8 + len(windows))
    assert rolling == pytest.approx(expected, rel=0, abs=tol)

    # After a chat prompt, a continuation that starts with whitespace (a target_delimiter) is warned about, once.
    lm._max_length = 64
    lm.loglikelihood(_instances("loglikelihood", [("The sky is", " blue")]))
    assert "target_delimiter" not in caplog.text
    lm._chat_prompts.update(["The sky is", "The sun is"])  # as if rendered by lm.apply_chat_template
    lm.loglikelihood(_instances("loglikelihood", [("The sky is", "blue")]))
    assert "target_delimiter" not in caplog.text
    lm.loglikelihood(_instances("loglikelihood", [("The sky is", " blue"), ("The sun is", " blue")]))
    assert caplog.text.count("with --apply_chat_template") == 1


def test_lm_eval_backend_settings_and_errors(eval_dir):
    pytest.importorskip("lm_eval")
    from llada_hf.lm_eval_backend import LLaDAEvalHarness, preset_for_task

    assert preset_for_task("base", "mmlu_abstract_algebra")["mc_num"] == 1
    assert preset_for_task("base", "cmmlu_agronomy")["mc_num"] == 1  # cmmlu's own entry, not mmlu's
    assert preset_for_task("base", "arc_challenge")["cfg"] == 0.5
    assert preset_for_task("base", "arc_easy") == {}
    assert preset_for_task("instruct", "mmlu_pro_math")["max_new_tokens"] == 256  # longest key wins over "mmlu"
    # --model_args win over lm-eval's own --batch_size / --device (the CLI always passes both).
    lm = LLaDAEvalHarness.create_from_arg_string(
        f"pretrained={eval_dir},dtype=float32,device=cpu,preset=base,cfg=1.0,batch_size=2",
        {"batch_size": 1, "device": "cuda:0", "max_batch_size": None},
    )
    assert lm.batch_size == 2 and lm.model.device.type == "cpu"
    # The estimator: official defaults < the task's preset entry < --model_args; --batch_size is not part of it.
    assert lm.likelihood_settings("mmlu_anatomy") == {"mc_num": 1, "mc_batch_size": 1, "cfg": 1.0}
    assert lm.likelihood_settings("arc_challenge") == {"mc_num": 128, "mc_batch_size": 8, "cfg": 1.0}
    assert lm.likelihood_settings("other") == {"mc_num": 128, "mc_batch_size": 32, "cfg": 1.0}
    # max_batch_size caps the rows per forward instead of being ignored.
    lm = LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", batch_size=8, max_batch_size=2, mc_num=8)
    assert lm.batch_size == 2 and lm._rows_per_forward() == 2
    assert lm.likelihood_settings(None)["mc_batch_size"] == 8  # unset: gcd(mc_num, 32)
    with pytest.raises(ValueError, match="divisible"):
        LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", device="cpu", mc_num=10, mc_batch_size=4)
    with pytest.raises(ValueError, match="preset"):
        LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", device="cpu", preset="nope")
    with pytest.raises(ValueError, match="rows_per_forward` is now `batch_size"):
        LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", device="cpu", rows_per_forward=4)


def test_lm_eval_presets_are_data_and_devices_follow_hflm(eval_dir):
    pytest.importorskip("lm_eval")
    from importlib import resources

    from llada_hf.hub import list_hub_configs
    from llada_hf.lm_eval_backend import DEFAULTS, GEN_KEYS, PRESETS, PRESETS_FILE, LLaDAEvalHarness, load_presets

    # The presets are package data beside the hub configs (notes under "_" keys), not code; not a hub config.
    raw = json.loads(resources.files("llada_hf.hub_configs").joinpath(PRESETS_FILE).read_text())
    assert set(PRESETS) == {"base", "instruct", "instruct_semi_ar", "llada1.5"} == {k for k in raw if k[0] != "_"}
    assert load_presets() == PRESETS and all(raw[name]["_source"] for name in PRESETS)
    assert all(key in DEFAULTS or key in GEN_KEYS for t in PRESETS.values() for e in t.values() for key in e)
    assert PRESETS["base"]["gsm8k"] == {"max_new_tokens": 1024, "steps": 1024, "block_length": 1024}
    assert "lm_eval_presets" not in list_hub_configs()
    # Devices are HFLM's: none given -> CUDA if available, else CPU; an absent cuda:N counts as not given.
    if not torch.cuda.is_available():
        for device in ({}, {"device": "cuda:0"}):
            lm = LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", **device)
            assert lm.device.type == lm.model.device.type == "cpu"


def test_lm_eval_generation_length_order(eval_dir, tmp_path):
    """gen_kwargs > --model_args > the task's max_gen_toks > the checkpoint's generation_config.json > the preset."""
    pytest.importorskip("lm_eval")
    import shutil

    from llada_hf import LLaDAGenerationConfig
    from llada_hf.lm_eval_backend import LLaDAEvalHarness

    def lengths(lm, task, gen_kwargs):
        settings = lm.generation_settings(task, gen_kwargs)
        return settings["max_new_tokens"], settings.get("steps"), settings.get("block_length")

    lm = LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", device="cpu", preset="instruct_semi_ar")
    assert lengths(lm, "gsm8k", {}) == (256, 256, 8)  # the preset
    # The task's length wins, but the preset's schedule was meant for 256 tokens: an error with the fix, no rescale.
    with pytest.raises(ValueError, match=r"steps=256 from the preset .*max_new_tokens=16 from the task"):
        lm.generation_settings("gsm8k", {"max_gen_toks": 16})
    assert lengths(lm, "gsm8k", {"max_gen_toks": 16, "steps": 16}) == (16, 16, 8)  # the fix; block 8 divides 16
    assert lengths(lm, "other", {}) == (256, None, None)  # nothing set: HFLM's max_gen_toks, not a 1024 canvas
    base = LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", device="cpu", preset="base")
    with pytest.raises(ValueError, match="steps=1024 and block_length=1024 from the preset"):
        base.generation_settings("gsm8k", {"max_gen_toks": 16})
    # A checkpoint whose generation_config.json was written on purpose ranks above the preset, below the task.
    path = tmp_path / "with_generation_config"
    shutil.copytree(eval_dir, path)
    LLaDAGenerationConfig(max_new_tokens=64, steps=32, block_length=32, mask_token_id=MASK_ID).save_pretrained(path)
    lm = LLaDAEvalHarness(pretrained=str(path), dtype="float32", device="cpu", preset="instruct_semi_ar")
    assert lengths(lm, "gsm8k", {}) == (64, 32, 32)
    with pytest.raises(ValueError, match="generation_config.json"):
        lm.generation_settings("gsm8k", {"max_gen_toks": 16})
    lm = LLaDAEvalHarness(pretrained=str(path), dtype="float32", device="cpu", gen_length=12, steps=6)
    with pytest.raises(ValueError, match="block_length=32 from the checkpoint"):  # steps are ours, the block is not
        lm.generation_settings("gsm8k", {"max_gen_toks": 16})
    lm = LLaDAEvalHarness(pretrained=str(path), dtype="float32", device="cpu", gen_length=12, steps=6, block_length=6)
    assert lengths(lm, "gsm8k", {"max_gen_toks": 16}) == (12, 6, 6)  # --model_args beat the task
    gen_kwargs = {"max_gen_toks": 16, "gen_length": 4, "steps": 2, "block_length": 2}
    assert lengths(lm, "gsm8k", gen_kwargs) == (4, 2, 2)  # --gen_kwargs beat --model_args


def test_lm_eval_generate_until_task_sets_canvas(eval_dir, tmp_path):
    """A generate_until task's max_gen_toks is the canvas length, even where the preset says 1024; the preset's
    1024-token schedule is then refused before any generate() call, and --gen_kwargs give the fix."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from llada_hf.lm_eval_backend import LLaDAEvalHarness

    data = tmp_path / "gen.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "answer": "blue"}) + "\n" for q in ("The sky is", "The sun is"))
    )
    (tmp_path / "gsm8k_tiny.yaml").write_text(
        "task: gsm8k_tiny\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'hf_cache'}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["zzz"]\n  max_gen_toks: 16\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    lm = LLaDAEvalHarness(pretrained=str(eval_dir), dtype="float32", device="cpu", preset="base", batch_size=2)
    calls, generate = [], lm.model.generate

    def spy(input_ids, **kwargs):
        calls.append((input_ids.shape[0], kwargs["max_new_tokens"], kwargs.get("steps"), kwargs.get("stop_strings")))
        return generate(input_ids, **kwargs)

    lm.model.generate = spy
    task_manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    with pytest.raises(ValueError, match="steps=1024 and block_length=1024 from the preset"):
        lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_tiny"], task_manager=task_manager)
    assert calls == []
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["gsm8k_tiny"], task_manager=task_manager, gen_kwargs="steps=16,block_length=16"
    )
    assert calls and calls[0][:3] == (2, 16, 16) and "zzz" in calls[0][3]  # one batch of 2, a 16-token canvas
    assert "exact_match,none" in results["results"]["gsm8k_tiny"]


@pytest.mark.slow
def test_lm_eval_cli_through_module(eval_dir, tmp_path):
    """`python -m llada_hf.lm_eval_backend` runs lm-eval's CLI with "llada_hf" registered (indexes all tasks: slow)."""
    pytest.importorskip("lm_eval")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(eval_dir).eval()
    docs, scores = _mc_docs_with_direct_scores(model, AutoTokenizer.from_pretrained(eval_dir))
    _write_mc_task(tmp_path, docs)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "llada_hf.lm_eval_backend", "--model", "llada_hf",
        "--model_args", f"pretrained={eval_dir},dtype=float32,device=cpu,method=exact",
        "--tasks", "tiny_mc", "--include_path", str(tmp_path), "--output_path", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    (result_file,) = out.rglob("results_*.json")
    assert json.loads(result_file.read_text())["results"]["tiny_mc"]["acc,none"] == pytest.approx(2 / 3)
