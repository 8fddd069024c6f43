"""generate(): golden reproduction, sampler invariants, batching, infilling, streaming, pipeline, chat, errors."""

import io

import pytest
import torch
from conftest import tiny_model
from llada_hf.generation.generation_parts import CONFIDENCE_RULES, transfer_schedule
from transformers import AutoModel, TextStreamer, pipeline
from transformers.modeling_outputs import MaskedLMOutput

import llada_hf
from llada_hf.chat import ChatSession
from llada_hf.tokenizer import build_tiny_tokenizer
from llada_hf.visualize import DenoisingVisualizer

MASK, EOS = 1000, 1001


def _official_kwargs(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    kwargs["max_new_tokens"] = kwargs.pop("gen_length")
    return kwargs


def test_golden_generate_cases(golden_model, golden_cases):
    assert len(golden_cases["generate"]) == 8
    for case in golden_cases["generate"]:
        if case["seed"] is not None:
            torch.manual_seed(case["seed"])
        out = golden_model.generate(torch.tensor(case["prompt"]), **_official_kwargs(case["kwargs"]))
        assert out.tolist() == case["expected"], case["name"]


def test_golden_padded_generate(golden_model, golden_cases):
    case = golden_cases["padded_generate"]
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    out = golden_model.generate(ids, attention_mask=mask, **_official_kwargs(case["kwargs"]))
    assert out[:, : ids.shape[1]].tolist() == case["input_ids"]  # prompt returned as received, padding included
    assert out[:, ids.shape[1] :].tolist() == case["expected_new_tokens"]


def test_generation_config_file_is_honoured(golden_dir, golden_cases, tmp_path):
    case = golden_cases["generate"][1]  # greedy_semi_ar
    model = AutoModel.from_pretrained(golden_dir)
    model.generation_config.update(**_official_kwargs(case["kwargs"]))
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(reloaded.generation_config, llada_hf.LLaDAGenerationConfig)
    assert (reloaded.generation_config.steps, reloaded.generation_config.block_length) == (16, 8)
    assert reloaded.generate(torch.tensor(case["prompt"])).tolist() == case["expected"]


def test_schedule_split_matches_official_rule():
    counts = torch.tensor([10, 3, 0])
    schedule = transfer_schedule(counts, 4).tolist()
    assert schedule == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert [sum(row) for row in schedule] == counts.tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Invariants with a stub model: logits depend only on position and the canvas, and forwards are counted.


class StubLM(llada_hf.LLaDAModelLM):
    """Deterministic logits: position p prefers token `prefer(p)` with confidence falling along the canvas."""

    def __init__(self, config, eos_from: int | None = None):
        super().__init__(config)
        self.calls, self.eos_from = 0, eos_from

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=None, **kwargs):
        assert position_ids is None or position_ids[0, 0] == 0  # the stub needs whole-canvas inputs
        self.calls += 1
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.config.vocab_size)
        positions = torch.arange(length)
        preferred = 10 + positions % 50
        if self.eos_from is not None:
            preferred = torch.where(positions >= self.eos_from, EOS, preferred)
        strength = 5.0 + (length - positions) * 0.01 + (input_ids != MASK).sum(-1, keepdim=True) * 1e-3
        logits.scatter_(2, preferred.expand(batch, length)[..., None], strength[..., None])
        return MaskedLMOutput(logits=logits[:, logits_to_keep] if logits_to_keep is not None else logits)


def stub(eos_from=None) -> StubLM:
    from conftest import tiny_config

    return StubLM(tiny_config(), eos_from=eos_from).eval()


@pytest.mark.parametrize("remasking", sorted(CONFIDENCE_RULES))
@pytest.mark.parametrize("steps, gen, block", [(16, 16, 16), (8, 32, 8), (6, 24, 12)])
def test_sampler_invariants(remasking, steps, gen, block):
    model = tiny_model(seed=5)
    prompt = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(1))
    out = model.generate(
        prompt,
        max_new_tokens=gen,
        steps=steps,
        block_length=block,
        remasking=remasking,
        return_dict_in_generate=True,
        output_history=True,
    )
    assert torch.equal(out.sequences[:, :5], prompt)  # prompt never changed
    assert not (out.sequences == MASK).any()  # no mask left
    assert out.nfe == steps and len(out.history) == steps
    per_block = steps // (gen // block)
    previous = torch.cat([prompt, torch.full((2, gen), MASK)], 1)
    for i, canvas in enumerate(out.history):
        block_end = 5 + (i // per_block + 1) * block
        assert (canvas[:, block_end:] == MASK).all()  # nothing beyond the current block committed
        committed = (previous != MASK) & (canvas != previous)
        assert not committed.any()  # committed tokens never change
        newly = ((previous == MASK) & (canvas != MASK)).sum(-1)
        assert newly.tolist() == [transfer_schedule(torch.tensor([block]), per_block)[0, i % per_block].item()] * 2
        previous = canvas


def test_greedy_is_deterministic_and_sampling_follows_the_generator():
    model = tiny_model(seed=2)
    prompt = torch.randint(0, 1000, (1, 6))
    kwargs = dict(max_new_tokens=16, steps=8, block_length=8)
    assert torch.equal(model.generate(prompt, **kwargs), model.generate(prompt, **kwargs))
    draws = [
        model.generate(prompt, do_sample=True, temperature=1.0, generator=torch.Generator().manual_seed(s), **kwargs)
        for s in (0, 0, 1)
    ]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # official style: temperature alone turns sampling on
    torch.manual_seed(3)
    a = model.generate(prompt, temperature=1.0, **kwargs)
    torch.manual_seed(3)
    b = model.generate(prompt, do_sample=True, temperature=1.0, **kwargs)
    assert torch.equal(a, b)


def test_num_return_sequences_samples_independent_rows():
    model = tiny_model(seed=2)
    prompt = torch.randint(0, 1000, (2, 4))
    out = model.generate(
        prompt, max_new_tokens=8, steps=8, do_sample=True, temperature=1.0, num_return_sequences=3,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.shape == (6, 12)
    assert torch.equal(out[:3, :4], prompt[:1].expand(3, 4)) and torch.equal(out[3:, :4], prompt[1:].expand(3, 4))
    assert len({tuple(row) for row in out[:3, 4:].tolist()}) > 1


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_padded_batch_rows_equal_rows_alone(cfg_scale):
    model = tiny_model(seed=4)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 1000, (n,), generator=generator) for n in (8, 5, 2)]
    batch = torch.stack([torch.cat([torch.full((8 - len(r),), EOS), r]) for r in rows])
    mask = (torch.arange(8)[None, :] >= torch.tensor([8 - len(r) for r in rows])[:, None]).long()
    kwargs = dict(max_new_tokens=16, steps=8, block_length=8, cfg_scale=cfg_scale)
    out = model.generate(batch, attention_mask=mask, **kwargs)
    for i, row in enumerate(rows):
        assert out[i, 8:].tolist() == model.generate(row[None], **kwargs)[0, len(row) :].tolist()


def test_threshold_decoding_commits_in_parallel():
    model = tiny_model(seed=1)
    prompt = torch.randint(0, 1000, (2, 4))
    everything = model.generate(
        prompt, max_new_tokens=16, block_length=8, threshold=1e-9, return_dict_in_generate=True
    )
    assert everything.nfe == 2 and not (everything.sequences == MASK).any()  # one forward per block
    one_by_one = model.generate(prompt, max_new_tokens=16, block_length=8, threshold=1.0, return_dict_in_generate=True)
    assert one_by_one.nfe == 16  # only the forced best token passes a threshold of 1
    greedy = model.generate(prompt, max_new_tokens=16, steps=16, block_length=8)
    assert torch.equal(one_by_one.sequences, greedy)  # 1 token/step by confidence = the official k=1 schedule


def test_early_stop_saves_forwards_and_keeps_the_answer():
    model = stub(eos_from=5 + 6)  # answer: 6 tokens then EOS
    prompt = torch.randint(0, 1000, (1, 5))
    kwargs = dict(max_new_tokens=32, steps=32, block_length=8, return_dict_in_generate=True)
    full = model.generate(prompt, **kwargs)
    early = model.generate(prompt, early_stop=True, **kwargs)
    assert full.nfe == 32 and early.nfe < full.nfe
    first_eos = full.sequences[0].tolist().index(EOS)
    assert early.sequences[0, :first_eos].tolist() == full.sequences[0, :first_eos].tolist()
    assert (early.sequences[0, first_eos:] == EOS).all()


def test_eos_controls():
    model = stub(eos_from=5 + 4)
    prompt = torch.randint(0, 1000, (1, 5))
    kwargs = dict(max_new_tokens=16, steps=16, block_length=16, return_dict_in_generate=True, output_history=True)
    assert not (model.generate(prompt, suppress_eos_logits=True, **kwargs).sequences == EOS).any()
    ranked = model.generate(prompt, suppress_eos_confidence="rank_last", **kwargs)
    first_steps = ranked.history[:4]  # 4 non-EOS answer positions exist: they are all committed first
    assert all(not (canvas[0, 5:] == EOS).any() for canvas in first_steps)
    assert (ranked.history[4][0, 5:] == EOS).sum() == 1


def test_infilling_fills_only_the_masks():
    model = tiny_model(seed=6)
    ids = torch.randint(0, 1000, (2, 12))
    ids[0, [2, 3, 7]] = MASK
    ids[1, [5, 9]] = MASK
    with pytest.raises(ValueError, match="infill=True"):
        model.generate(ids, max_new_tokens=8, steps=8)
    filled = model.generate(ids, max_new_tokens=0, infill=True, steps=2)
    fixed = ids != MASK
    assert torch.equal(filled[fixed], ids[fixed]) and not (filled == MASK).any()
    both = model.generate(ids, max_new_tokens=8, steps=4, block_length=4, infill=True)
    assert torch.equal(both[:, :12][fixed], ids[fixed]) and not (both == MASK).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=32, steps=15, block_length=8), "divisible by the number of blocks"),
        (dict(max_new_tokens=30, steps=15, block_length=8), "divisible by block_length"),
        (dict(max_new_tokens=16, steps=32), "steps \\(32\\) > max_new_tokens"),
        (dict(remasking="lowest"), "valid: \\['entropy', 'low_confidence', 'margin', 'random'\\]"),
        (dict(do_sample=True, temperature=-1.0), "temperature must be a finite number in \\[0.0, inf\\)"),
        (dict(threshold=1.5), "threshold must be a finite number in \\(0.0, 1.0\\]"),
        (dict(threshold=0.0), "threshold must be a finite number in \\(0.0, 1.0\\]"),
        (dict(pad_token_id=MASK), "pad_token_id equals mask_token_id"),
        (dict(stepz=3), "unexpected arguments: \\['stepz'\\]"),
    ],
)
def test_bad_requests_raise(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.generate(torch.randint(0, 1000, (1, 4)), **{"max_new_tokens": 16, "steps": 16, **kwargs})


def test_bad_inputs_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="mask token"):
        model.generate(torch.tensor([[1, MASK, 3]]), max_new_tokens=8, steps=8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(torch.tensor([[1, 2, 5000]]), max_new_tokens=8, steps=8)
    with pytest.raises(ValueError, match="needs a prompt"):
        model.generate(torch.empty((1, 0), dtype=torch.long), max_new_tokens=8, steps=8, cfg_scale=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming, visualisation, pipeline, chat


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(words=[" the", " cat", "hello"])


class CollectingStreamer(TextStreamer):
    def __init__(self, tokenizer, **kwargs):
        super().__init__(tokenizer, skip_prompt=True, **kwargs)
        self.pieces = []

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.pieces.append(text)


@pytest.mark.parametrize("block", [4, 16])
def test_streamed_text_equals_final_answer(tokenizer, block):
    model = tiny_model(seed=7)
    prompt = tokenizer("hello the cat", return_tensors="pt").input_ids
    streamer = CollectingStreamer(tokenizer, skip_special_tokens=True)
    out = model.generate(prompt, max_new_tokens=16, steps=16, block_length=block, streamer=streamer)
    answer = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    assert "".join(streamer.pieces) == answer and len(streamer.pieces) >= 1


def test_visualizer_shows_masks_turning_into_tokens(tokenizer):
    model = tiny_model(seed=7)
    prompt = tokenizer("hello", return_tensors="pt").input_ids
    sink = io.StringIO()
    view = DenoisingVisualizer(tokenizer, total_steps=8, stream=sink, mask_glyph="▒", color=False)
    model.generate(prompt, max_new_tokens=8, steps=8, block_length=8, streamer=view)
    assert len(view.frames) == 8
    masks = [frame.count("▒") for frame in view.frames]
    assert masks == sorted(masks, reverse=True) and masks[0] == 7 and masks[-1] == 0
    assert "[step 8/8 | 0 masked]" in sink.getvalue()


def test_pipeline_strings_chat_and_batches_equal_generate(tokenizer):
    model = tiny_model(seed=8)
    model.generation_config.update(max_new_tokens=16, steps=8, block_length=8)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = "hello the cat"
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    expected = tokenizer.decode(model.generate(ids)[0, ids.shape[1] :])
    assert pipe(text)[0]["generated_text"] == text + expected  # no injected sampling defaults
    assert pipe(text, return_full_text=False)[0]["generated_text"] == expected

    messages = [{"role": "user", "content": "hello"}]
    chat_ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    chat_answer = tokenizer.decode(model.generate(chat_ids["input_ids"])[0, chat_ids["input_ids"].shape[1] :])
    reply = pipe(messages)[0]["generated_text"]
    assert reply[-1] == {"role": "assistant", "content": chat_answer}

    texts = [text, "the cat"]
    batched = pipe(texts, batch_size=2, return_full_text=False)
    assert [b[0]["generated_text"] for b in batched] == [
        pipe(t, return_full_text=False)[0]["generated_text"] for t in texts
    ]


def test_chat_session_follows_official_history_rules(tokenizer):
    model = stub(eos_from=None)
    session = ChatSession(model, tokenizer, max_new_tokens=8, steps=8, block_length=8)
    first_prompt = session.build_prompt("hello")
    reply = session.send("hello")
    assert isinstance(reply, str)
    history = session.history
    assert not (history == EOS).any() and torch.equal(history[: first_prompt.shape[0]], first_prompt)
    second_prompt = session.build_prompt("the cat")
    turn = tokenizer.apply_chat_template([{"role": "user", "content": "the cat"}], tokenize=True, return_dict=False)
    assert second_prompt.tolist() == history.tolist() + turn[1:]  # BOS dropped, EOS removed from the history


def test_chat_cli(tokenizer, tmp_path, monkeypatch, capsys):
    from llada_hf import cli

    model = tiny_model(seed=9)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nthe cat\nexit\n"))
    assert (
        cli.main(["chat", "--model", str(tmp_path), "--max-new-tokens", "8", "--steps", "8", "--block-length", "8"])
        == 0
    )
    assert capsys.readouterr().out.count("LLaDA:") == 2


@pytest.fixture(scope="module")
def half_step_demo(tmp_path_factory):
    """The demo checkpoint with a generation_config.json of 8 steps for its 16-token canvas (2 tokens per step)."""
    import json
    import shutil

    from llada_hf.demo import DEMO_DIR, load_demo_model

    folder = tmp_path_factory.mktemp("demo_half_steps")
    for path in DEMO_DIR.iterdir():
        shutil.copy(path, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    assert (config["steps"], config["max_new_tokens"], config["block_length"]) == (16, 16, 16)
    config["steps"] = 8
    (folder / "generation_config.json").write_text(json.dumps(config))
    return load_demo_model(folder)


def _expected_steps(saved_steps: int, saved_tokens: int, tokens: int, blocks: int) -> int:
    """The checkpoint's tokens per step applied to `tokens`, per block rounded half up, 1..block size per block."""
    per_block = tokens * saved_steps / saved_tokens / blocks
    return blocks * min(max(int(per_block + 0.5), 1), tokens // blocks)


@pytest.mark.parametrize(
    "kwargs, tokens, blocks",
    [({"max_new_tokens": 32}, 32, 2), ({"max_length": 4 + 32}, 32, 2), ({"max_new_tokens": 16}, 16, 1)],
    ids=["32 tokens", "max_length", "saved canvas"],
)
def test_steps_scale_with_a_new_canvas(half_step_demo, kwargs, tokens, blocks):
    """A call that sets the canvas but not `steps` keeps the checkpoint's tokens per step (counted as forwards)."""
    model, tokenizer = half_step_demo
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    out = model.generate(ids, return_dict_in_generate=True, **kwargs)
    assert out.nfe == _expected_steps(8, 16, tokens, blocks)
    explicit = model.generate(ids, return_dict_in_generate=True, steps=blocks, **kwargs)
    assert explicit.nfe == blocks  # an explicit value is used as given


@pytest.mark.parametrize("masks", [1, 3, 6])
def test_infill_steps_scale_with_the_masks(half_step_demo, masks):
    """`generate(ids_with_masks, infill=True)` on a saved model: the canvas is the masks, the steps follow the
    checkpoint's tokens per step (the demo's own 16 steps used to be refused as `steps (16) > masks to fill`)."""
    model, tokenizer = half_step_demo
    mask_id = model.config.mask_token_id
    ids = torch.tensor([[tokenizer.bos_token_id, *range(5, 17)]])
    ids[0, 2 : 2 + 2 * masks : 2] = mask_id
    assert int((ids == mask_id).sum()) == masks
    out = model.generate(ids, infill=True, return_dict_in_generate=True)
    assert out.nfe == _expected_steps(8, 16, masks, 1)
    assert not (out.sequences == mask_id).any()
    assert torch.equal(out.sequences[ids != mask_id], ids[ids != mask_id])
