"""Exports other engines load (issue 22 item 3): `export_official` gives back each family's official files exactly
(tensors, config.json), with generation config, tokenizer + chat template and the remote code its auto_map names,
loadable where llada_hf is not installed; LoRA adapters are merged first."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_remote_code_check, tiny_model
from safetensors import safe_open
from transformers import AutoModel

from llada_hf.export import export_official, export_remote_code
from llada_hf.tokenizer import build_tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = {"llada8b": "golden_tiny", "lladamoe": "lladamoe_tiny", "llada2": "llada2_tiny"}
LORA_TARGETS = {"llada8b": ["q_proj", "v_proj", "up_proj"], "lladamoe": ["q_proj", "v_proj", "up_proj"]}
LORA_TARGETS["llada2"] = ["qkv_proj", "o_proj", "up_proj"]

pytestmark = pytest.mark.usefixtures("one_thread")


def load(family: str):
    return AutoModel.from_pretrained(FIXTURES / FAMILIES[family]).eval()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


@pytest.mark.parametrize("family", FAMILIES)
def test_export_official_reproduces_the_fixture(family, tmp_path):
    fixture = FIXTURES / FAMILIES[family]
    model = load(family)
    tokenizer = build_tiny_tokenizer()
    out = export_official(model, tmp_path / "out", tokenizer=tokenizer)
    official, exported = read_tensors(fixture / "model.safetensors"), read_tensors(out / "model.safetensors")
    assert sorted(exported) == sorted(official)
    for key, tensor in official.items():
        assert exported[key].dtype == tensor.dtype and exported[key].shape == tensor.shape, key
        assert torch.equal(exported[key], tensor), key
    assert json.loads((out / "config.json").read_text()) == json.loads((fixture / "config.json").read_text())
    generation = type(model.generation_config).from_pretrained(out)
    for key in ("max_new_tokens", "steps", "block_length", "threshold", "mask_token_id", "eos_token_id"):
        assert getattr(generation, key) == getattr(model.generation_config, key), key
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert {entry.split(".")[0] + ".py" for entry in auto_map.values()} <= {p.name for p in out.glob("*.py")}
    saved = json.loads((out / "tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (out / "chat_template.jinja").read_text()
    assert template == tokenizer.chat_template


def run_check(checkpoint: Path, ids: list, tmp_path: Path) -> dict:
    lines = run_remote_code_check(checkpoint, ids, tmp_path, "official")
    return json.loads(lines[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_official_export_loads_with_remote_code_without_llada_hf(family, tmp_path):
    model = load(family)
    tokenizer = build_tiny_tokenizer()
    out = export_official(model, tmp_path / "out", tokenizer=tokenizer)
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    ids = [[5, 6, 7, 8, 1000, 1000]]
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits
    report = run_check(out, ids, tmp_path)
    assert report["module"].startswith("transformers_modules.")
    assert report["auto_model"] == auto_map["AutoModel"].split(".")[1]
    assert report["causal_lm"] == auto_map["AutoModelForCausalLM"].split(".")[1]
    message = [{"role": "user", "content": "hi"}]
    assert report["chat"] == tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    assert torch.equal(torch.tensor(report["logits"]), expected)


def test_export_official_keeps_bf16(tmp_path):
    model = load("llada2").to(torch.bfloat16)
    out = export_official(model, tmp_path / "out")
    tensors = read_tensors(out / "model.safetensors")
    assert {tensor.dtype for tensor in tensors.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_tied_head_exports_without_output_matrix(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    out = export_official(model, tmp_path / "out")
    assert "model.transformer.ff_out.weight" not in read_tensors(out / "model.safetensors")
    assert json.loads((out / "config.json").read_text())["weight_tying"] is True
    ids = torch.tensor([[5, 6, 7, 8, 1000]])
    with torch.no_grad():
        assert torch.equal(AutoModel.from_pretrained(out).eval()(ids).logits, model(ids).logits)


def lora_model(family: str):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[family], init_lora_weights=False)
    torch.manual_seed(0)  # random A and B (not the zero B of a fresh adapter): the adapter moves the logits
    return peft.get_peft_model(load(family), config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_is_merged_before_export(family, tmp_path):
    peft_model = lora_model(family)
    before = {key: tensor.clone() for key, tensor in peft_model.state_dict().items()}
    ids = torch.tensor([[5, 6, 7, 8, 1000, 1000]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        plain = load(family)(ids).logits
    assert (expected - plain).abs().max() > 1e-2  # the adapter changes the model: a dropped adapter would show
    for export in (export_official, export_remote_code):
        out = export(peft_model, tmp_path / export.__name__)
        tensors = read_tensors(out / "model.safetensors")
        assert not [key for key in tensors if "lora" in key or "base_layer" in key]
        with torch.no_grad():
            got = AutoModel.from_pretrained(out).eval()(ids).logits
        assert torch.allclose(got, expected, atol=1e-4), export.__name__  # W + BA vs Wx + B(Ax): fp32 rounding
    after = peft_model.state_dict()  # the caller's model keeps its adapter, unmerged
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_unwrapped_lora_weights_are_refused(tmp_path):
    peft_model = lora_model("llada8b")
    with pytest.raises(ValueError, match="merge_and_unload"):
        export_official(peft_model.base_model.model, tmp_path / "out")


def test_cli_official_export_writes_the_tokenizer(tmp_path):
    from llada_hf.cli import main

    source = export_official(load("llada8b"), tmp_path / "source", tokenizer=build_tiny_tokenizer())
    out = tmp_path / "out"
    assert main(["export", "--model", str(source), "--format", "official", "--output", str(out)]) == 0
    for name in ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "config.json", "model.safetensors"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
