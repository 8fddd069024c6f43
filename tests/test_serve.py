"""`llada-hf serve`: the OpenAI endpoints on the demo model (a server subprocess on a free 127.0.0.1 port, talked to
with the `openai` client), the canvas planning, and batching that gives each row its alone answer (every family)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import llada21_checkpoint  # noqa: E402

from llada_hf.demo import load_demo_model  # noqa: E402
from llada_hf.serving import protocol  # noqa: E402
from llada_hf.serving.engine import DiffusionBatcher  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
QUESTION = "What is 12 + 7?"
OTHER = "What is 9 plus 90?"  # a different prompt length: left padding inside a batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving_app() -> str | None:
    """Why the server cannot start here (transformers < 5.25 has no `EventStream` in its serving app), or None."""
    try:
        import llada_hf.serving.app  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def client():
    """A `llada-hf serve` subprocess on the demo model; always terminated (bounded waits)."""
    if (missing := _serving_app()) is not None:
        pytest.skip(f"llada-hf serve needs transformers >= 5.25 (the [serve] extra): {missing}")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "llada_hf.cli", "serve", "--port", str(port), "--max-batch-size", "8"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start: {process.stderr.read()[-2000:] if process.poll() else ''}")
                time.sleep(0.3)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60, max_retries=0)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def expected_answer(model, tokenizer, question: str, **kwargs) -> tuple[str, str]:
    """(text, finish_reason) from `model.generate` in-process: the answer up to its first EOS/EoT."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, **kwargs)[0, ids.shape[1] :].tolist()
    config = model.generation_config
    ends = {config.eos_token_id, config.eot_token_id}
    cut = next((i for i, t in enumerate(out) if t in ends), None)
    return tokenizer.decode(out[:cut], skip_special_tokens=True), "length" if cut is None else "stop"


def chat(client, question: str, **kwargs):
    return client.chat.completions.create(model="demo", messages=[{"role": "user", "content": question}], **kwargs)


def test_models_endpoint(client):
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_demo_answer_stops(client, demo):
    text, _ = expected_answer(*demo, QUESTION)
    response = chat(client, QUESTION)
    assert response.choices[0].message.content == text
    assert "19" in text
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == len(demo[1](text, add_special_tokens=False).input_ids)


def test_max_tokens_20_is_a_whole_block_canvas(client, demo):
    # 20 -> two 16-token blocks, 32 steps (the demo's one token per step), the answer cut back to 20 tokens
    text, reason = expected_answer(*demo, QUESTION, max_new_tokens=32, steps=32, block_length=16)
    response = chat(client, QUESTION, max_tokens=20)
    assert (response.choices[0].message.content, response.choices[0].finish_reason) == (text, reason)
    short = chat(client, QUESTION, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_streaming_same_text(client):
    whole = chat(client, QUESTION).choices[0].message.content
    chunks = list(chat(client, QUESTION, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens > 0


def test_n_returns_n_choices(client):
    response = chat(client, QUESTION, n=2)
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].message.content == response.choices[1].message.content  # greedy


def test_completions_endpoint(client, demo):
    model, tokenizer = demo
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           tokenize=False)  # fmt: skip
    response = client.completions.create(model="demo", prompt=prompt)
    assert response.choices[0].text == expected_answer(model, tokenizer, QUESTION)[0]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"no_such_field": 1}}, "no_such_field"),
        ({"top_p": 0.5}, "top_p"),  # greedy: top_p would be ignored, so it is refused
        ({"n": 0}, "n"),
        ({"stop": 5}, "stop"),
        ({"extra_body": {"steps": 0}}, "steps"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream_options": {"chunk_size": 2}}, "stream_options"),
    ],
)
def test_refused_fields_name_themselves(client, kwargs, field):
    with pytest.raises(openai.BadRequestError) as error:
        chat(client, QUESTION, **kwargs)
    assert field in str(error.value)


def test_completions_refuses_echo(client):
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model="demo", prompt="What is", echo=True)


def test_other_model_name_is_400(client):
    with pytest.raises(openai.BadRequestError, match="model"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": QUESTION}])


def test_concurrent_requests_get_their_alone_answers(client):
    alone = {q: chat(client, q).choices[0].message.content for q in (QUESTION, OTHER)}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: chat(client, q).choices[0].message.content, [QUESTION, OTHER] * 2))
    assert answers == [alone[QUESTION], alone[OTHER]] * 2


# -- in-process: canvas planning and the batcher ---------------------------------------------------------------------


def test_plan_canvas(demo):
    config = demo[0].generation_config  # 16 new tokens, 16 steps, blocks of 16, 128 positions
    for max_tokens, canvas in [(8, 16), (12, 16), (17, 32), (None, 16), (200, 96)]:
        plan = protocol.plan_canvas(config, 128, 20, max_tokens, {})
        assert (plan["max_new_tokens"], plan["steps"]) == (canvas, canvas)
    assert protocol.plan_canvas(config, 128, 20, 20, {"block_length": 8})["max_new_tokens"] == 24
    with pytest.raises(ValueError, match="max_tokens"):
        protocol.plan_canvas(config, 128, 120, 8, {})
    one_block = type(config)(max_new_tokens=128, steps=64)  # no block_length: the canvas is one block
    assert protocol.plan_canvas(one_block, 256, 20, 20, {}) == {"max_new_tokens": 20, "steps": 10, "block_length": 20}


def test_cut_answer_counts_real_tokens():
    decode = lambda ids: "".join(chr(ord("a") + i) for i in ids)  # noqa: E731
    assert protocol.cut_answer([0, 1, 9, 9], {9}, None, [], decode) == ("ab", 2, "stop")
    assert protocol.cut_answer([0, 1, 2, 9], {9}, 2, [], decode) == ("ab", 2, "length")
    assert protocol.cut_answer([0, 1, 2, 9], {9}, None, ["c"], decode) == ("ab", 3, "stop")


class _NoTokenizer:
    eos_token_id = pad_token_id = None


@pytest.mark.parametrize("family", ["demo", "golden_tiny", "lladamoe_tiny", "llada2_tiny"])
def test_batched_rows_equal_alone_rows(demo, family):
    """Two jobs of different prompt lengths queued before the worker starts share one left-padded batch; each row
    gets what it gets alone (greedy)."""
    model = demo[0] if family == "demo" else AutoModel.from_pretrained(FIXTURES / family).eval()
    config = model.generation_config
    vocab = min(model.config.vocab_size, 300)
    torch.manual_seed(0)
    prompts = [torch.randint(0, vocab - 40, (n,)).tolist() for n in (5, 11)]
    settings = protocol.plan_canvas(config, 64, 11, 16, {"block_length": 8})

    def run(jobs):
        batcher = DiffusionBatcher(model, _NoTokenizer(), max_batch_size=8, start=False)
        futures = [batcher.submit(protocol.Job([p], 1, dict(settings), None, [])) for p in jobs]
        batcher.start()
        try:
            return [f.result(timeout=60)[0] for f in futures], batcher.batches
        finally:
            batcher.shutdown()

    together, batches = run(prompts)
    assert batches == 1
    assert together == [run([p])[0][0] for p in prompts]


def test_different_settings_never_share_a_batch(demo):
    model = demo[0]
    plans = [protocol.plan_canvas(model.generation_config, 128, 8, 16, extra) for extra in ({}, {"steps": 8})]
    batcher = DiffusionBatcher(model, _NoTokenizer(), max_batch_size=8, start=False)
    futures = [batcher.submit(protocol.Job([[5, 6, 7]], 1, plan, None, [])) for plan in plans * 2]
    batcher.start()
    try:
        [f.result(timeout=60) for f in futures]
    finally:
        batcher.shutdown()
    assert batcher.batches == 2  # one per settings group, each with its two requests


@pytest.mark.parametrize("argv, flag", [(["--max-batch-size", "0"], "--max-batch-size"), (["--port", "-1"], "--port")])
def test_bad_flags_are_usage_errors_before_loading(argv, flag):
    from llada_hf import cli
    from llada_hf.errors import UsageError

    args = cli.build_parser().parse_args(["serve", "/nonexistent", *argv])
    with pytest.raises(UsageError, match=flag):
        args.serve_main(args)


def test_serve_picks_the_llada21_sampler_by_model_name(tmp_path, monkeypatch):
    """`llada-hf serve` on a model named LLaDA2.1 generates with token editing (its config.json is LLaDA2.0's)."""
    if (missing := _serving_app()) is not None:
        pytest.skip(f"llada-hf serve needs transformers >= 5.25: {missing}")
    import uvicorn
    from llada_hf.generation.generation_llada2 import TokenEditing

    from llada_hf import cli
    from llada_hf.serving import app as serving_app

    built, edits = [], []
    real_build, real_edit = serving_app.build_app, TokenEditing.__call__
    monkeypatch.setattr(
        serving_app, "build_app", lambda model, *a, **k: built.append(model) or real_build(model, *a, **k)
    )
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)  # no listening: the loaded model is what counts
    monkeypatch.setattr(TokenEditing, "__call__", lambda self, *a: edits.append(1) or real_edit(self, *a))
    path = llada21_checkpoint(tmp_path / "LLaDA2.1-tiny")
    assert cli.main(["serve", str(path), "--dtype", "float32", "--port", "0"]) == 0
    model = built[0]
    assert model.generation_config.sampler == "llada2.1"
    settings = protocol.plan_canvas(model.generation_config, 64, 5, 16, {"block_length": 8})
    batcher = DiffusionBatcher(model, _NoTokenizer(), max_batch_size=2)
    try:
        batcher.submit(protocol.Job([[5, 6, 7, 8, 9]], 1, dict(settings), None, [])).result(timeout=60)
    finally:
        batcher.shutdown()
    assert edits  # the request ran the editing sampler
