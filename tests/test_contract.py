"""generate() keeps the transformers contract: every field and keyword is honoured or rejected by name."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model
from llada_hf.generation.generation_config import HONOURED_FIELDS, REJECTED_FIELDS
from llada_hf.generation.generation_llada import DiffusionSampler
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from llada_hf.demo import load_demo_model

MASK, EOS = 1000, 1001
FIT = dict(max_new_tokens=8, steps=8, block_length=8)


@pytest.fixture(scope="module")
def demo():
    model, tokenizer = load_demo_model()
    return model, tokenizer


def chat_ids(tokenizer, *questions, padding_side="left"):
    tokenizer.padding_side = padding_side
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    tokenizer.padding_side = "left"
    return batch.input_ids, batch.attention_mask


def answer(tokenizer, output, prompt_len):
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in output[:, prompt_len:]]


# ---------------------------------------------------------------------------------------------------------------------
# Every field classified


def _non_default_value(name, default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 2
    if isinstance(default, float):
        return default + 0.5
    if name in ("compile_config", "watermarking_config", "cache_config", "continuous_batching_config"):
        return {}
    if name in ("constraints", "force_words_ids", "dola_layers"):
        return [[5]]
    if name in ("num_assistant_tokens_schedule", "cache_implementation", "speculation_type"):
        return "static"
    return 3


def test_every_generation_config_field_is_honoured_or_rejected():
    defaults = GenerationConfig._get_default_generation_params()
    fields = [n for n in GenerationConfig().to_dict() if not n.startswith("_") and n != "transformers_version"]
    assert len(fields) > 60
    unclassified = [n for n in fields if n not in HONOURED_FIELDS and n not in REJECTED_FIELDS]
    assert unclassified == []  # a new transformers field must be given a meaning or a reason
    model = tiny_model()
    prompt = torch.tensor([[5, 6, 7]])
    for name in fields:
        if name in HONOURED_FIELDS:
            continue
        value = _non_default_value(name, defaults.get(name))
        with pytest.raises(ValueError, match=name):
            model.generate(prompt, **FIT, **{name: value})


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_beams=2), "num_beams"),
        (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
        (dict(no_repeat_ngram_size=2), "no_repeat_ngram_size"),
        (dict(guidance_scale=2.0), "cfg_scale"),
        (dict(max_time=1.0), "max_time"),
        (dict(bad_words_ids=[[5, 6]]), "single-token"),
        (dict(sequence_bias={(5, 6): 1.0}), "single-token"),
        (dict(assistant_model=object()), "assistant_model"),
        (dict(output_attentions=True), "output_attentions"),
        (dict(use_cache=False, cache="prefix"), "use_cache"),
    ],
)
def test_unsupported_strategies_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_model().generate(torch.tensor([[5, 6, 7]]), **FIT, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Honoured fields


def test_max_length_gives_the_asked_length():
    model, prompt = tiny_model(), torch.tensor([[5, 6, 7, 8]])
    out = model.generate(prompt, max_length=12, steps=8, block_length=8)
    assert out.shape == (1, 12)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=8, steps=8, block_length=8))
    with pytest.raises(ValueError, match="max_length"):
        model.generate(prompt, max_length=4, steps=1)
    with pytest.warns(UserWarning, match="max_new_tokens takes precedence"):
        assert model.generate(prompt, max_length=40, **FIT).shape == (1, 12)


def test_min_new_tokens_keeps_eos_out_of_the_first_columns():
    from test_generation import stub

    model, prompt = stub(eos_from=9), torch.tensor([[5, 6, 7, 8]])  # EOS preferred from canvas column 9 on
    free = model.generate(prompt, max_new_tokens=12, steps=12)
    assert (free[0, 9:] == EOS).all()
    held = model.generate(prompt, max_new_tokens=12, steps=12, min_new_tokens=8)
    assert not (held[0, 4:12] == EOS).any() and (held[0, 12:] == EOS).all()
    assert torch.equal(held, model.generate(prompt, max_new_tokens=12, steps=12, min_length=12))


def test_top_k_1_sampling_is_deterministic_across_seeds():
    model, prompt = tiny_model(seed=2), torch.tensor([[5, 6, 7, 8]])
    kwargs = dict(max_new_tokens=16, steps=8, block_length=8, do_sample=True, temperature=1.0)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(model.generate(prompt, top_k=1, **kwargs))
    assert torch.equal(*runs)
    free = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        free.append(model.generate(prompt, **kwargs))
    assert not torch.equal(*free)  # sampling does vary: top_k is what pinned it


@pytest.mark.parametrize("kwargs", [dict(top_p=1e-6), dict(min_p=1.0)])
def test_tight_nucleus_and_min_p_are_argmax(kwargs):
    model, prompt = tiny_model(seed=2), torch.tensor([[5, 6, 7, 8]])
    sample = dict(max_new_tokens=8, steps=8, block_length=8, do_sample=True, temperature=5.0)
    torch.manual_seed(0)
    out = model.generate(prompt, return_dict_in_generate=True, output_scores=True, **sample, **kwargs)
    for scores in out.scores:  # the proposal keeps one token per position: the argmax of the raw logits
        assert (scores > -torch.inf).sum(-1).eq(1).all()


def test_logits_processor_that_bans_a_token_keeps_it_out(demo):
    model, tokenizer = demo
    ids, _ = chat_ids(tokenizer, "What is 12 + 7?")
    plain = model.generate(ids)
    assert answer(tokenizer, plain, ids.shape[1]) == ["12 + 7 = 19."]
    nine = tokenizer.convert_tokens_to_ids("9")

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            assert input_ids.shape[0] == scores.shape[0] and input_ids.shape[1] == ids.shape[1] + 16  # the canvas
            return scores.index_fill(-1, torch.tensor([nine]), -torch.inf)

    banned = model.generate(ids, logits_processor=LogitsProcessorList([Ban()]))
    assert nine in plain[0].tolist() and nine not in banned[0].tolist()
    assert torch.equal(banned, model.generate(ids, bad_words_ids=[[nine]]))
    assert torch.equal(banned, model.generate(ids, suppress_tokens=[nine]))
    assert torch.equal(banned, model.generate(ids, sequence_bias={(nine,): -1e9}))
    assert torch.equal(banned, model.generate(ids, sequence_bias=[[[nine], -1e9]]))  # serialised form


def test_repetition_penalty_is_the_transformers_processor_on_the_canvas():
    model, prompt = tiny_model(seed=4), torch.tensor([[5, 6, 7, 8]])
    kwargs = dict(max_new_tokens=16, steps=16, block_length=8)
    penalised = model.generate(prompt, repetition_penalty=3.0, **kwargs)
    assert not torch.equal(penalised, model.generate(prompt, **kwargs))
    processor = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(3.0)])
    assert torch.equal(penalised, model.generate(prompt, logits_processor=processor, **kwargs))


def test_begin_suppress_tokens_only_touches_the_first_answer_column():
    model, prompt = tiny_model(seed=4), torch.tensor([[5, 6, 7, 8]])
    plain = model.generate(prompt, **FIT)
    first = int(plain[0, 4])
    out = model.generate(prompt, begin_suppress_tokens=[first], **FIT)
    assert int(out[0, 4]) != first


def test_stop_strings_cut_the_answer(demo):
    model, tokenizer = demo
    ids, _ = chat_ids(tokenizer, "What is 12 + 7?")
    out = model.generate(ids, stop_strings=["="], tokenizer=tokenizer, return_dict_in_generate=True)
    assert answer(tokenizer, out.sequences, ids.shape[1]) == ["12 + 7 ="]
    eos = model.generation_config.eos_token_id
    tail = out.sequences[0, ids.shape[1] :].tolist()
    cut = next(n for n in range(1, 17) if tokenizer.decode(tail[:n]).endswith("="))
    assert set(tail[cut:]) == {eos}
    assert out.nfe < 16  # the row stopped spending forwards
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(ids, stop_strings=["="])


def test_stopping_criteria_are_checked_on_the_final_prefix(demo):
    model, tokenizer = demo
    ids, _ = chat_ids(tokenizer, "What is 12 + 7?")
    seen = []

    class AfterThree(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            seen.append(input_ids.shape[1])
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= ids.shape[1] + 3)

    out = model.generate(ids, stopping_criteria=[AfterThree()])
    assert seen == sorted(seen) and seen[-1] == ids.shape[1] + 3  # prefixes grow one final token at a time
    assert answer(tokenizer, out, ids.shape[1]) == ["12 +"]


def test_output_scores_and_logits(demo):
    model, tokenizer = demo
    ids, _ = chat_ids(tokenizer, "What is 12 + 7?")
    out = model.generate(
        ids, return_dict_in_generate=True, output_scores=True, output_logits=True, repetition_penalty=1.3
    )
    assert len(out.scores) == len(out.logits) == len(out.score_columns) == out.nfe == 16
    assert out.scores[0].shape == (1, 16, model.config.vocab_size)
    canvas = torch.cat([ids, torch.full((1, 16), model.generation_config.mask_token_id)], 1)
    start, end = out.score_columns[0]
    raw = model(canvas).logits[:, start:end]  # independent route: one plain forward of the first canvas
    torch.testing.assert_close(out.logits[0], raw)
    assert not torch.equal(out.scores[0], out.logits[0])  # the penalty shaped the scores
    plain = model.generate(ids, return_dict_in_generate=True)
    assert plain.scores is None and plain.logits is None


# ---------------------------------------------------------------------------------------------------------------------
# Bad or unusual input


def test_right_padding_gives_the_left_padded_answers(demo):
    model, tokenizer = demo
    questions = ("What is 12 + 7?", "9 + 9 = ?")
    left, left_mask = chat_ids(tokenizer, *questions)
    right, right_mask = chat_ids(tokenizer, *questions, padding_side="right")
    assert not torch.equal(left, right)
    expected = model.generate(left, attention_mask=left_mask)
    with pytest.warns(UserWarning, match="Right padding"):
        out = model.generate(right, attention_mask=right_mask)
    assert torch.equal(out, expected)
    assert answer(tokenizer, out, left.shape[1]) == ["12 + 7 = 19.", "9 + 9 = 18."]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(do_sample=True, temperature=math.nan), "temperature"),
        (dict(do_sample=True, temperature=math.inf), "temperature"),
        (dict(cfg_scale=math.nan), "cfg_scale"),
        (dict(cfg_scale=math.inf), "cfg_scale"),
        (dict(threshold=math.nan), "threshold"),
        (dict(factor=-1.0), "factor"),
        (dict(threshold=0.9, factor=1.0), "at most one"),
        (dict(remask_budget=-1), "remask_budget"),
        (dict(compile="fast"), "compile"),
        (dict(mask_token_id=5000), "mask_token_id"),
        (dict(eos_token_id=5000), "eos_token_id"),
        (dict(min_new_tokens=9), "min_new_tokens"),
    ],
)
def test_bad_values_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_model().generate(torch.tensor([[5, 6, 7]]), **FIT, **kwargs)


def test_integer_dtypes_and_1d_ids_work_like_long_2d():
    model, prompt = tiny_model(), torch.tensor([[5, 6, 7, 8]])
    expected = model.generate(prompt, **FIT)
    assert torch.equal(model.generate(prompt.int(), **FIT), expected)
    assert torch.equal(model.generate(prompt[0], **FIT), expected)
    assert torch.equal(model.generate(prompt, attention_mask=torch.ones(1, 4, dtype=torch.int32), **FIT), expected)


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda m: m.generate(torch.tensor([[5.0, 6.0]]), **FIT), TypeError, "integer token ids"),
        (lambda m: m.generate([[5, 6]], **FIT), TypeError, "input_ids must be a torch.LongTensor"),
        (lambda m: m.generate("hello", **FIT), TypeError, "input_ids must be a torch.LongTensor"),
        (lambda m: m.generate(torch.tensor([[5, 6]]), generator=123, **FIT), TypeError, "generator"),
        (lambda m: m.generate(torch.ones(1, 2, 2, dtype=torch.long), **FIT), ValueError, "input_ids must be"),
        (lambda m: m.generate(torch.tensor([[5, 6]]), generation_config={"steps": 2}), TypeError, "generation_config"),
    ],
)
def test_wrong_argument_types_are_named(call, error, name):
    with pytest.raises(error, match=name):
        call(tiny_model())


def test_huge_canvas_is_refused_before_allocating():
    with pytest.raises(ValueError, match="GiB per step"):
        tiny_model().generate(torch.tensor([[5, 6]]), max_new_tokens=2**40, steps=1, block_length=2**40)


def test_canvas_beyond_the_trained_length_warns():
    model = tiny_model(max_position_embeddings=16)
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=16, steps=16)


def test_plain_generation_config_takes_the_models_ids(demo):
    model, tokenizer = demo
    ids, _ = chat_ids(tokenizer, "What is 12 + 7?")
    plain = GenerationConfig(max_new_tokens=16)
    out = model.generate(ids, generation_config=plain, steps=16, block_length=16)
    assert torch.equal(out, model.generate(ids))


def test_small_models_get_special_ids_from_their_config():
    model = tiny_model()
    assert model.generation_config.eot_token_id is None  # not the 8B's 126348
    with pytest.raises(ValueError, match="eot_token_id"):
        model.generate(torch.tensor([[5, 6]]), eot_token_id=126348, **FIT)


def test_infill_without_length_fills_only_the_placed_masks():
    model = tiny_model()
    canvas = torch.tensor([[5, MASK, 7, MASK, MASK, 9]])
    out = model.generate(canvas, infill=True)
    assert out.shape == canvas.shape and not (out == MASK).any()
    assert out[0, [0, 2, 5]].tolist() == [5, 7, 9]


# ---------------------------------------------------------------------------------------------------------------------
# Selection rules, self-correction, the capturable step


def test_factor_selection_commits_several_tokens_per_forward(demo):
    model, tokenizer = demo
    ids, _ = chat_ids(tokenizer, "What is 12 + 7?")
    out = model.generate(ids, factor=1.0, return_dict_in_generate=True)
    assert answer(tokenizer, out.sequences, ids.shape[1]) == ["12 + 7 = 19."]
    assert out.nfe < 16


def test_self_correction_remasks_low_confidence_commits_at_equal_forwards():
    model, prompt = tiny_model(seed=3), torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    kwargs = dict(max_new_tokens=16, steps=8, block_length=8, return_dict_in_generate=True, output_history=True)
    plain = model.generate(prompt, **kwargs)
    out = model.generate(prompt, remask_budget=3, remask_threshold=1.0, **kwargs)
    assert out.nfe == plain.nfe == 8 and not (out.sequences == MASK).any()
    remasked = 0
    for before, after in zip(out.history, out.history[1:]):
        remasked += int(((before != MASK) & (after == MASK)).sum())
    assert 0 < remasked <= 3 * 2 * 2  # budget per row and block
    assert int(out.remasked.sum()) == remasked and plain.remasked is None
    assert not torch.equal(out.sequences, plain.sequences)
    assert torch.equal(
        model.generate(prompt, remask_budget=3, remask_threshold=0.0, **kwargs).sequences, plain.sequences
    )  # fmt: skip  (nothing below confidence 0: the official path)


def test_step_compiles_without_graph_breaks(golden_model, golden_cases):
    """fullgraph=True turns any graph break into an error; the eager backend keeps the test fast on CPU."""
    compiled = torch.compile(DiffusionSampler.step, fullgraph=True, dynamic=True, backend="eager")
    golden_model._llada_compiled_steps = {True: compiled}
    try:
        for case in golden_cases["generate"]:
            if case["seed"] is not None:
                torch.manual_seed(case["seed"])
            kwargs = dict(case["kwargs"])
            kwargs["max_new_tokens"] = kwargs.pop("gen_length")
            out = golden_model.generate(torch.tensor(case["prompt"]), compile=True, **kwargs)
            assert out.tolist() == case["expected"], case["name"]
    finally:
        del golden_model._llada_compiled_steps


def test_chat_cli_uses_the_models_generation_config():
    result = subprocess.run(
        [sys.executable, "-m", "llada_hf.cli", "chat"],
        input="What is 12 + 7?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "LLaDA: 12 + 7 = 19." in result.stdout


@pytest.mark.slow
def test_compiled_step_gives_the_golden_tokens(golden_dir, golden_cases):
    """compile=True through inductor on CPU (~3 min of compilation): every golden case token-exact."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(golden_dir).eval()
    for case in golden_cases["generate"]:
        if case["seed"] is not None:
            torch.manual_seed(case["seed"])
        kwargs = dict(case["kwargs"])
        kwargs["max_new_tokens"] = kwargs.pop("gen_length")
        assert model.generate(torch.tensor(case["prompt"]), compile=True, **kwargs).tolist() == case["expected"]


def test_sampling_filters_without_sampling_warn():
    model, prompt = tiny_model(), torch.tensor([[5, 6, 7]])
    with pytest.warns(UserWarning, match="top_k, top_p only filter sampled proposals"):
        out = model.generate(prompt, top_k=3, top_p=0.5, **FIT)
    assert torch.equal(out, model.generate(prompt, **FIT))  # greedy, as in transformers


def test_huge_canvas_in_small_blocks_is_refused_before_planning():
    with pytest.raises(ValueError, match="GiB per step"):
        tiny_model().generate(torch.tensor([[5, 6]]), max_new_tokens=2**40, steps=2**35, block_length=32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_step_on_gpu_matches_eager(golden_dir, golden_cases, mode):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(golden_dir).eval().cuda()
    for case in golden_cases["generate"]:
        kwargs = dict(case["kwargs"])
        kwargs["max_new_tokens"] = kwargs.pop("gen_length")
        prompt = torch.tensor(case["prompt"], device="cuda")
        outputs = []
        for compile_mode in (False, mode):
            torch.manual_seed(case["seed"] or 0)
            outputs.append(model.generate(prompt, compile=compile_mode, **kwargs))
        assert torch.equal(*outputs), case["name"]
