"""The rest of the package for LLaDA2.0 and LLaDA-MoE: `pipeline("text-generation")`, LoRA (peft), `device_map`
CPU/disk offload, the flat remote-code export, and the opt-in router auxiliary loss."""

import json
from pathlib import Path

import pytest
import torch
from conftest import forward_depth, fp32_tol, run_remote_code_check
from transformers import AutoModel, pipeline

import llada_hf
from llada_hf.export import export_remote_code
from llada_hf.tokenizer import build_tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
FAMILY = {"llada2": FIXTURES / "llada2_tiny", "lladamoe": FIXTURES / "lladamoe_tiny"}
GEN = {"llada2": dict(max_new_tokens=8, steps=4, block_length=4), "lladamoe": dict(max_new_tokens=8, steps=4)}
# LoRA targets: attention projections and every SwiGLU (dense MLP, routed experts, shared experts). Routers stay
# frozen (LLaDA2's is not an nn.Linear; adapting a router would move the expert choice of the base model).
LORA_TARGETS = {
    "llada2": ["qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "lladamoe": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
MOE_BLOCK = {"llada2": "LLaDA2SparseMoeBlock", "lladamoe": "LLaDAMoESparseMoeBlock"}


pytestmark = pytest.mark.usefixtures("one_thread")


def load(family):
    return AutoModel.from_pretrained(FAMILY[family]).eval()


@pytest.mark.parametrize("family", FAMILY)
def test_pipeline_text_generation(family):
    model = load(family)
    model.generation_config.update(**GEN[family])
    tokenizer = build_tiny_tokenizer(words=[" the", " cat", "hello"])
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = "hello the cat"
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    expected = tokenizer.decode(model.generate(ids)[0, ids.shape[1] :])
    assert pipe(text, return_full_text=False)[0]["generated_text"] == expected
    assert pipe(text)[0]["generated_text"] == text + expected
    texts = [text, "hello cat the"]  # the same token length: no padding
    batched = pipe(texts, batch_size=2, return_full_text=False)
    assert [b[0]["generated_text"] for b in batched] == [
        pipe(t, return_full_text=False)[0]["generated_text"] for t in texts
    ]


@pytest.mark.parametrize("family", FAMILY)
def test_lora_trains_only_adapters_of_attention_and_experts(family):
    peft = pytest.importorskip("peft")
    model = load(family).train()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[family], lora_dropout=0.0)
    peft_model = peft.get_peft_model(model, config)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".experts." in n for n in trainable) and not any(".gate.lora" in n for n in trainable)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    noisy = ids.clone()
    noisy[:, ::3], labels[:, ::3] = model.config.mask_token_id, ids[:, ::3]
    loss = peft_model(input_ids=noisy, labels=labels, p_mask=torch.full(ids.shape, 1 / 3)).loss
    loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    assert set(grads) <= trainable
    assert any(".experts." in n and "lora_B" in n and g.abs().sum() > 0 for n, g in grads.items())  # B starts at 0
    base = {n: p for n, p in peft_model.named_parameters() if "lora_" not in n}
    assert all(p.grad is None for p in base.values())


@pytest.mark.parametrize("family", FAMILY)
def test_device_map_cpu_disk_offload_same_logits_and_tokens(family, tmp_path):
    plain = load(family)
    plain.save_pretrained(tmp_path / "model")
    device_map = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}  # fmt: skip
    model = AutoModel.from_pretrained(tmp_path / "model", device_map=device_map, offload_folder=tmp_path / "off")
    model.eval()
    assert model.get_input_embeddings().weight.device.type == "meta"  # really offloaded
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected, got = plain(ids).logits, model(ids).logits
    assert (got - expected).abs().max().item() <= fp32_tol(expected, forward_depth(plain.config, ids.shape[1]))
    kwargs = dict(GEN[family], attention_mask=mask)
    assert torch.equal(model.generate(ids, **kwargs), plain.generate(ids, **kwargs))


@pytest.mark.parametrize("family", FAMILY)
def test_remote_code_export_loads_without_llada_hf(family, tmp_path):
    model = load(family)
    checkpoint = export_remote_code(model, tmp_path / "ckpt")
    names = {p.name for p in checkpoint.glob("*.py")}
    wanted = {"llada2": {"configuration_llada2.py", "modeling_llada2.py", "generation_llada2.py"},
              "lladamoe": {"configuration_llada_moe.py", "modeling_llada_moe.py"}}[family]  # fmt: skip
    assert wanted <= names and "generation_llada.py" in names
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    entry = {"llada2": "modeling_llada2", "lladamoe": "modeling_llada_moe"}[family]
    assert auto_map["AutoModel"].split(".")[0] == entry
    ids = [[5, 6, 7, 8]]
    expected = model.generate(torch.tensor(ids), max_new_tokens=8, steps=8, block_length=4).tolist()
    lines = run_remote_code_check(checkpoint, ids, tmp_path)
    module, generation_class, tokens = lines[-3:]
    assert module.startswith("transformers_modules.")
    assert generation_class == type(model.generation_config).__name__
    assert json.loads(tokens) == expected


@pytest.mark.parametrize("family", FAMILY)
def test_router_aux_loss_is_opt_in_and_trains_the_router(family):
    model = load(family)
    blocks = [m for m in model.modules() if type(m).__name__ == MOE_BLOCK[family]]
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(2))
    labels = torch.where(torch.arange(10) % 2 == 0, ids, -100)
    p_mask = torch.full(ids.shape, 0.5)
    plain = model(input_ids=ids, labels=labels, p_mask=p_mask)
    assert plain.aux_loss is None and plain.router_logits is None
    out = model(input_ids=ids, labels=labels, p_mask=p_mask, output_router_logits=True)
    assert len(out.router_logits) == len(blocks) > 0
    assert out.router_logits[0].shape == (20, model.config.num_experts)
    torch.testing.assert_close(out.logits, plain.logits)
    assert out.aux_loss.item() >= 1.0 - 1e-5  # num_experts * sum f * P >= 1 would need P = f; it is ~1 near balance
    torch.testing.assert_close(out.loss, plain.loss + model.config.router_aux_loss_coef * out.aux_loss)
    model.zero_grad()
    out.aux_loss.backward()
    router = blocks[0].gate
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    # Perfectly balanced routing with uniform probabilities gives exactly 1.
    top_idx = torch.arange(8).view(4, 2)
    uniform = llada_hf.modeling.modeling_body.load_balancing_loss([(torch.zeros(4, 8), top_idx)], 8, torch.sigmoid)
    assert uniform.item() == pytest.approx(4.0)  # sigmoid(0) = 0.5 per expert, not normalised: 8 * 0.5 = 4
