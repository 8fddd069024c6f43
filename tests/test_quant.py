"""Quantised inference (`llada_hf.quantize`, `--quantize`): torchao int8 / int4 weight-only on CPU, bitsandbytes nf4
on a GPU. The torchao tests skip when torchao is not installed (it is the optional `[quant]` extra)."""

from pathlib import Path

import pytest
import torch

from llada_hf.demo import DEMO_PROMPTS, answer_questions, load_demo_model
from llada_hf.quantize import (
    QUANTIZE_CHOICES,
    QuantizationError,
    load_quantized,
    quantization_config,
    quantized_linear_count,
    stored_bytes,
    torchao_available,
)

needs_torchao = pytest.mark.skipif(not torchao_available(), reason="torchao not installed (pip install '.[quant]')")
EXPECTED = ["12 + 7 = 19.", "45 + 38 = 83.", "9 + 90 = 99."]
LINEARS = 3 * 7  # 3 layers x (q, k, v, o, gate, up, down); the LM head stays fp32


@pytest.fixture(scope="module")
def fp32_answers():
    model, tokenizer = load_demo_model()
    return answer_questions(model, tokenizer, list(DEMO_PROMPTS))


def test_fp32_demo_answers(fp32_answers):
    assert fp32_answers == EXPECTED


@needs_torchao
@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantised_demo_answers_and_round_trip(name, tmp_path, fp32_answers):
    model, tokenizer = load_quantized(None, name)
    assert quantized_linear_count(model) == LINEARS
    assert answer_questions(model, tokenizer, list(DEMO_PROMPTS)) == EXPECTED
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 31 + 44?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    ).input_ids  # fmt: skip
    before = model.generate(prompt)
    model.save_pretrained(tmp_path)
    fp32_bytes = stored_bytes(load_demo_model.__globals__["DEMO_DIR"])
    assert 0 < stored_bytes(tmp_path) < 0.5 * fp32_bytes  # weights really stored in 8 bits (+ scales)

    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(tmp_path).eval()  # the saved config carries the quantisation
    assert quantized_linear_count(reloaded) == LINEARS
    assert torch.equal(reloaded.generate(prompt), before)


@needs_torchao
def test_footprint_undercounts_tensor_subclasses(tmp_path):
    """Why the benchmark reports stored bytes: get_memory_footprint() sees the fp32 outer size."""
    model, _ = load_quantized(None, "int8")
    model.save_pretrained(tmp_path)
    assert model.get_memory_footprint() > 2 * stored_bytes(tmp_path)


def test_unknown_and_gpu_only_names_fail_clearly(monkeypatch):
    with pytest.raises(QuantizationError, match="unknown quantisation"):
        quantization_config("int3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(QuantizationError, match="needs a CUDA GPU"):
        quantization_config("nf4")


def test_missing_torchao_is_a_clear_error(monkeypatch):
    import llada_hf.quantize as quantize

    monkeypatch.setattr(quantize, "torchao_available", lambda: False)
    with pytest.raises(QuantizationError, match="needs torchao"):
        quantize.quantization_config("int8")


def test_cli_quantize_flag():
    from llada_hf.cli import build_parser

    parser = build_parser()
    for command in ("demo", "chat"):
        args = parser.parse_args([command, "--quantize", "int8"])
        assert args.quantize == "int8"
        assert parser.parse_args([command]).quantize is None
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--quantize", "int3"])
    assert set(QUANTIZE_CHOICES) == {"int8", "int4", "nf4"}


def test_cli_nf4_on_cpu_is_one_line_error(monkeypatch, capsys):
    from llada_hf.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--quantize", "nf4", "--no-visualize"]) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


@needs_torchao
def test_cli_demo_int8(capsys):
    from llada_hf.cli import main

    assert main(["demo", "--quantize", "int8", "--no-visualize", "--prompt", "What is 12 + 7?"]) == 0
    assert "LLaDA: 12 + 7 = 19." in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["nf4", "int8"])
def test_gpu_quantised_demo_answers(name):
    pytest.importorskip("bitsandbytes" if name == "nf4" else "torchao")
    model, tokenizer = load_quantized(None, name, dtype="bfloat16" if name == "nf4" else "auto")
    assert answer_questions(model, tokenizer, list(DEMO_PROMPTS)) == EXPECTED


@needs_torchao
def test_eval_quantize_reaches_the_lm_eval_backend(monkeypatch):
    """`llada-hf eval --quantize int8` becomes the backend's `quantize=int8`, which loads quantised linears through
    HFLM's from_pretrained; the quantised demo model still answers its demo prompts through generate_until."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    import llada_hf.lm_eval_backend as backend
    from llada_hf import cli

    seen = []
    monkeypatch.setattr(backend, "main", lambda argv: seen.append(argv))
    assert cli.main(["eval", "--quantize", "int8", "--model", "llada_hf", "--model_args", "pretrained=x"]) == 0
    assert cli.main(["eval", "--model_args=pretrained=x", "--quantize", "int4"]) == 0
    assert cli.main(["eval", "--tasks", "t"]) == 0
    assert seen == [["--model", "llada_hf", "--model_args", "pretrained=x,quantize=int8"],
                    ["--model_args=pretrained=x,quantize=int4"], ["--tasks", "t"]]  # fmt: skip

    demo = str(Path(backend.__file__).parent / "assets" / "demo")
    lm = backend.LLaDAEvalHarness.create_from_arg_string(f"pretrained={demo},dtype=float32,device=cpu,quantize=int8")
    assert quantized_linear_count(lm.model) == LINEARS
    plain = backend.LLaDAEvalHarness(pretrained=demo, dtype="float32", device="cpu")
    assert quantized_linear_count(plain.model) == 0
    contexts = [lm.apply_chat_template([{"role": "user", "content": q}]) for q in DEMO_PROMPTS]
    requests = [Instance("generate_until", {}, (c, {"until": ["<|eot_id|>"], "max_gen_toks": 16}), i)
                for i, c in enumerate(contexts)]  # fmt: skip
    assert [text.strip() for text in lm.generate_until(requests, disable_tqdm=True)] == EXPECTED
