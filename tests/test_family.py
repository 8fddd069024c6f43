"""The LLaDA family beyond LLaDA-8B: LLaDA2.0 (`llada2_moe`) and LLaDA-MoE (`llada`, like LLaDA-8B).

Golden cases (`fixtures/llada2_tiny`, `fixtures/lladamoe_tiny`) come from the official hub modeling files and the
official ML-GSAI sampler / likelihood code; the parameter counts of the published LLaDA2.0 shapes are computed here
independently, by a closed-form formula.
"""

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import forward_depth, fp32_tol
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.initialization import no_init_weights

import llada_hf
from llada_hf.hub import hub_config_path, load_hub_config
from llada_hf.likelihood import batch_log_likelihood, log_likelihood

FIXTURES = Path(__file__).parent / "fixtures"
LLADA2_DIR, MOE_DIR, LLADA_DIR = FIXTURES / "llada2_tiny", FIXTURES / "lladamoe_tiny", FIXTURES / "golden_tiny"
ATTN = ["sdpa", "eager"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llada2_cases() -> dict:
    return json.loads((LLADA2_DIR / "cases.json").read_text())


@pytest.fixture(scope="module")
def moe_cases() -> dict:
    return json.loads((MOE_DIR / "cases.json").read_text())


@pytest.fixture(scope="module")
def moe_model():
    return AutoModel.from_pretrained(MOE_DIR).eval()


def official_folder(source: Path, tmp_path: Path) -> Path:
    """Only the official files: config.json + model.safetensors (no generation config, no cases)."""
    folder = tmp_path / source.name
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, folder / name)
    return folder


def block_causal_mask(length: int, block_length: int) -> torch.Tensor:
    """The official sampler's mask: log of a block lower-triangular ones matrix, built in bf16, (1, 1, L, L)."""
    blocks = length // block_length
    tril = torch.tril(torch.ones(blocks, blocks, dtype=torch.bfloat16))
    return tril.repeat_interleave(block_length, 0).repeat_interleave(block_length, 1).log()[None, None]


def assert_golden_logits(logits: torch.Tensor, case: dict) -> None:
    for (row, col), expected in zip(case["logits_sample"]["positions"], case["logits_sample"]["values"]):
        assert (logits[row, col] - torch.tensor(expected)).abs().max() <= 1e-5, (row, col)
    assert logits.argmax(-1).tolist() == case["argmax"]
    assert logits.double().sum().item() == pytest.approx(case["logits_sum"], abs=1e-2)


def _official_kwargs(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    kwargs["max_new_tokens"] = kwargs.pop("gen_length")
    return kwargs


# ---------------------------------------------------------------------------------------------------------------------
# Loading: both configs read unchanged, model_type "llada" told apart by architectures / keys


@pytest.mark.parametrize("attn", ATTN)
def test_llada2_golden_forward(tmp_path, llada2_cases, attn):
    folder = official_folder(LLADA2_DIR, tmp_path)
    model, info = AutoModel.from_pretrained(folder, attn_implementation=attn, output_loading_info=True)
    assert type(model) is llada_hf.LLaDA2MoeModelLM  # AutoModel gives the head, like the official auto_map
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    model.eval()
    case = llada2_cases["forward"]
    with torch.no_grad():
        assert_golden_logits(model(torch.tensor(case["input_ids"])).logits, case)

    # The official sampler's block-causal 4-D mask (block 8, length 24), additive fp32 or boolean.
    case = llada2_cases["forward_block_mask"]
    ids, mask = torch.tensor(case["input_ids"]), block_causal_mask(24, 8).float()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=torch.arange(24)[None]).logits
        assert_golden_logits(logits, case)
        assert torch.equal(model(ids, attention_mask=mask == 0).logits, logits)
        # The mask matters: the first block cannot see the masked last block, unlike the bidirectional forward.
        assert (model(ids).logits[0, :8] - logits[0, :8]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ATTN)
def test_llada_moe_golden_forward(tmp_path, moe_cases, attn):
    folder = official_folder(MOE_DIR, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llada"  # the same string as LLaDA-8B
    model, info = AutoModel.from_pretrained(folder, attn_implementation=attn, output_loading_info=True)
    assert type(model) is llada_hf.LLaDAMoEModelLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    case = moe_cases["forward"]
    assert case["attention_mask_is_ignored"]  # the official forward ignores masks; the golden input has none
    with torch.no_grad():
        assert_golden_logits(model.eval()(torch.tensor(case["input_ids"])).logits, case)


def test_auto_classes_tell_the_family_apart():
    assert type(AutoConfig.from_pretrained(LLADA_DIR)) is llada_hf.LLaDAConfig
    assert type(AutoConfig.from_pretrained(MOE_DIR)) is llada_hf.LLaDAMoEConfig
    assert type(AutoConfig.from_pretrained(LLADA2_DIR)) is llada_hf.LLaDA2MoeConfig
    moe_dict = json.loads((MOE_DIR / "config.json").read_text())
    # Without `architectures`, the LLaDA-MoE-only keys decide; LLaDA-8B's official dict stays an LLaDAConfig.
    assert type(llada_hf.LLaDAConfig.from_dict({**moe_dict, "architectures": None})) is llada_hf.LLaDAMoEConfig
    assert type(llada_hf.LLaDAConfig.from_dict(json.loads((LLADA_DIR / "config.json").read_text()))) is (
        llada_hf.LLaDAConfig
    )
    pairs = [
        (AutoConfig.from_pretrained(LLADA_DIR), llada_hf.LLaDAModelLM),
        (AutoConfig.from_pretrained(MOE_DIR), llada_hf.LLaDAMoEModelLM),
        (AutoConfig.from_pretrained(LLADA2_DIR), llada_hf.LLaDA2MoeModelLM),
    ]
    for config, model_class in pairs:
        for auto_class in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
            assert type(auto_class.from_config(config)) is model_class
    llada_hf.register()  # idempotent


@pytest.mark.parametrize("source", [LLADA2_DIR, MOE_DIR], ids=["llada2", "lladamoe"])
def test_save_pretrained_round_trip(source, tmp_path):
    model = AutoModel.from_pretrained(source).eval()
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in saved  # the official remote-code pointers are not carried into a native save
    if source == LLADA2_DIR:  # native (Llama-style) attention names; the official ones are renamed at load time
        assert "model.layers.0.self_attn.qkv_proj.weight" in keys and "model.embed_tokens.weight" in keys
        assert "model.layers.1.mlp.gate.expert_bias" in keys
    else:  # already Llama-style officially; LLaDA-8B's renaming (same model_type) must not touch them
        assert keys == set(load_file(source / "model.safetensors"))
        assert saved["model_type"] == "llada" and saved["architectures"] == ["LLaDAMoEModelLM"]
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is type(model)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded.eval()(ids).logits)


@pytest.mark.parametrize("source", [LLADA2_DIR, MOE_DIR], ids=["llada2", "lladamoe"])
def test_attention_backend_switch_and_recorded_outputs(source):
    model = AutoModel.from_pretrained(source, attn_implementation="sdpa").eval()
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sdpa = model(ids).logits
        model.set_attn_implementation("eager")  # the attention modules use the interface: switchable at runtime
        assert model.config._attn_implementation == "eager"
        out = model(ids, output_hidden_states=True, output_attentions=True)
    assert (out.logits - sdpa).abs().max() <= fp32_tol(sdpa, forward_depth(model.config, ids.shape[1]))
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.attentions[0].shape == (1, model.config.num_attention_heads, 10, 10)
    assert (out.attentions[0][0, 0].triu(1) > 0).any()  # future keys get weight: bidirectional


@pytest.mark.parametrize("source", [LLADA2_DIR, MOE_DIR], ids=["llada2", "lladamoe"])
def test_bf16_runs_with_fp32_rope(source):
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(3))
    fp32 = AutoModel.from_pretrained(source).eval()
    with torch.no_grad():
        reference = fp32(ids).logits
        rotary = fp32.model.rotary_emb
        x, positions = torch.zeros(1, dtype=torch.bfloat16), torch.arange(300)[None]  # beyond the tiny 256 positions
        exact_tables = [t.to(torch.bfloat16) for t in rotary(x.float(), positions)]
        for model in (AutoModel.from_pretrained(source, dtype=torch.bfloat16), fp32.to(torch.bfloat16)):
            logits = model.eval()(ids).logits
            assert logits.dtype == torch.bfloat16
            assert (logits.float().argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
            # `.to(bfloat16)` also casts the RoPE frequencies: they are rebuilt in fp32 (tables rounded once).
            tables = model.model.rotary_emb(x, positions)
            assert all(torch.equal(a, b) for a, b in zip(tables, exact_tables))
            assert model.model.rotary_emb.inv_freq.dtype == torch.float32


@pytest.mark.parametrize("source", [LLADA2_DIR, MOE_DIR], ids=["llada2", "lladamoe"])
def test_diffusion_loss_trains_router_and_experts(source):
    model = AutoModel.from_pretrained(source).train()
    generator = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 1000, (2, 12), generator=generator)
    noisy = labels.masked_fill(torch.rand(2, 12, generator=generator) < 0.5, 1000)
    labels = labels.masked_fill(noisy != 1000, -100)
    loss = model(noisy, labels=labels, p_mask=torch.full((2, 1), 0.5)).loss
    loss.backward()
    moe = model.model.layers[1].mlp
    router = moe.gate.weight  # the official name in both models
    assert loss.item() > 0 and router.grad is not None and router.grad.abs().sum() > 0
    assert sum(e.down_proj.weight.grad is not None for e in moe.experts) >= 2  # routed experts get gradients
    assert all(not b.requires_grad for n, b in model.named_buffers() if n.endswith("expert_bias"))


def test_modeling_files_import_only_torch_transformers_and_siblings():
    """Flat remote-code export needs this: hub files import torch, transformers, the standard library and siblings."""
    modeling_dir = Path(llada_hf.modeling.__file__).parent
    siblings = {p.stem for p in modeling_dir.glob("*.py")} | {"generation_llada", "generation_llada2"}
    for name in ("configuration_llada2", "modeling_llada2", "configuration_llada_moe", "modeling_llada_moe"):
        tree = ast.parse((modeling_dir / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module in siblings, (name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for module in modules:
                    top = module.split(".")[0]
                    assert top in {"torch", "transformers"} or top in sys.stdlib_module_names, (name, module)


# ---------------------------------------------------------------------------------------------------------------------
# LLaDA-MoE: the LLaDA-8B sampler and likelihood, token-exact; padding honoured (the documented deviation)


def test_llada_moe_golden_generate_cases(moe_model, moe_cases):
    assert len(moe_cases["generate"]) == 8
    for case in moe_cases["generate"]:
        if case["seed"] is not None:
            torch.manual_seed(case["seed"])
        out = moe_model.generate(torch.tensor(case["prompt"]), **_official_kwargs(case["kwargs"]))
        assert out.tolist() == case["expected"], case["name"]


def test_llada_moe_padded_batch_gives_alone_answers(moe_model, moe_cases):
    case = moe_cases["padded_generate"]
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    out = moe_model.generate(ids, attention_mask=mask, **_official_kwargs(case["kwargs"]))
    assert out[:, : ids.shape[1]].tolist() == case["input_ids"]  # prompt returned as received, padding included
    assert out[:, ids.shape[1] :].tolist() == case["expected_alone_new_tokens"]
    # The official code attends to the pads and answers differently: that is the deviation we document.
    assert case["expected_alone_new_tokens"] != case["expected_batch_new_tokens"]


@pytest.mark.parametrize("attn", ATTN)
def test_llada_moe_padding_mask_is_honoured(moe_model, attn):
    model = AutoModel.from_pretrained(MOE_DIR, attn_implementation=attn).eval()
    generator = torch.Generator().manual_seed(0)
    lengths, width = [12, 7, 3], 12
    rows = [torch.randint(0, 1000, (n,), generator=generator) for n in lengths]
    batch = torch.stack([torch.cat([torch.full((width - len(r),), 1001), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]).long() for r in rows])
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            assert (padded[i, width - len(row) :] - alone).abs().max() <= fp32_tol(
                alone, forward_depth(model.config, width)
            )
        # Without padding, a mask changes nothing: the official (mask-dropping) numbers stay reproducible.
        full = torch.ones_like(batch)
        assert torch.equal(model(batch, attention_mask=full).logits, model(batch).logits)
        assert (model(batch).logits[2, -3:] - model(rows[2][None]).logits[0]).abs().max() > 1e-4


@pytest.mark.parametrize("run_index", [0, 1, 2])
def test_llada_moe_golden_likelihood_runs(moe_model, moe_cases, run_index):
    case = moe_cases["likelihood"]
    run = case["runs"][run_index]
    kwargs = dict(mc_num=run["mc_num"], batch_size=run["batch_size"], cfg_scale=run["cfg_scale"])
    torch.manual_seed(run["seed"])
    value = log_likelihood(moe_model, case["prompt"], case["answer"], **kwargs)
    depth = forward_depth(moe_model.config, len(case["prompt"]) + len(case["answer"]), vocab=True) + run["mc_num"]
    assert value == pytest.approx(run["expected"], rel=0, abs=fp32_tol(run["expected"], depth))
    torch.manual_seed(run["seed"])
    batched = batch_log_likelihood(moe_model, [(case["prompt"], case["answer"])], **kwargs)
    assert batched[0] == pytest.approx(run["expected"], rel=0, abs=fp32_tol(run["expected"], depth))


# ---------------------------------------------------------------------------------------------------------------------
# LLaDA2.0 routing against an independent loop implementation of the rule in the reference


def reference_route(scores_row, bias_row, n_group, topk_group, top_k, scaling):
    """One token: groups ranked by the sum of their two best biased scores, best `topk_group` kept, top-k experts
    inside them by biased score; weights = un-biased scores, renormalised, times the scaling factor."""
    experts = len(scores_row)
    size = experts // n_group
    biased = [s + b for s, b in zip(scores_row, bias_row)]
    group_score = [sum(sorted(biased[g * size : (g + 1) * size], reverse=True)[:2]) for g in range(n_group)]
    kept = sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group]
    candidates = [e for e in range(experts) if e // size in kept]
    chosen = sorted(candidates, key=lambda e: -biased[e])[:top_k]
    total = sum(scores_row[e] for e in chosen)
    return {e: scores_row[e] / total * scaling for e in chosen}


def test_llada2_router_matches_reference_rule():
    config = llada_hf.LLaDA2MoeConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, num_experts=16, num_experts_per_tok=3, n_group=4, topk_group=2,
        moe_intermediate_size=8, routed_scaling_factor=2.5, mask_token_id=60, pad_token_id=61, eos_token_id=61,
    )  # fmt: skip
    torch.manual_seed(0)
    model = llada_hf.LLaDA2MoeModelLM(config).eval()
    router = model.model.layers[1].mlp.gate
    router.expert_bias.copy_(torch.randn(16) * 0.3)  # large enough to change choices
    hidden = torch.randn(64, 16)
    _, top_weights, top_idx = router(hidden)  # the order of transformers DeepSeek-V3 router
    scores = torch.sigmoid(hidden.double() @ router.weight.double().T)
    changed = 0
    for t in range(hidden.shape[0]):
        expected = reference_route(scores[t].tolist(), router.expert_bias.tolist(), 4, 2, 3, 2.5)
        got = dict(zip(top_idx[t].tolist(), top_weights[t].tolist()))
        assert set(got) == set(expected), t
        assert all(abs(got[e] - expected[e]) <= fp32_tol(expected[e], 2 * 16) for e in got), t  # 16-wide dot, sum
        unbiased = reference_route(scores[t].tolist(), [0.0] * 16, 4, 2, 3, 2.5)
        changed += set(unbiased) != set(expected)
    assert changed > 0  # the bias changed some choices, so the test sees whether it is used


@pytest.mark.parametrize("attn", ATTN)
def test_llada2_padding_mask_is_honoured(attn):
    model = AutoModel.from_pretrained(LLADA2_DIR, attn_implementation=attn).eval()
    row = torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(1))
    batch = torch.cat([torch.full((4,), 1001), row])[None]
    mask = torch.cat([torch.zeros(4), torch.ones(5)]).long()[None]
    with torch.no_grad():
        alone = model(row[None]).logits[0]
        assert (model(batch, attention_mask=mask).logits[0, 4:] - alone).abs().max() <= fp32_tol(
            alone, forward_depth(model.config, 9)
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(score_function="softmax"), "score_function"),
        (dict(norm_head=True), "norm_head"),
        (dict(rotary_dim=6), "rotary_dim"),
        (dict(num_experts=6), "divisible by n_group"),
        (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    ],
)
def test_llada2_config_rejects_what_it_cannot_compute(overrides, message):
    base = json.loads((LLADA2_DIR / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        llada_hf.LLaDA2MoeConfig.from_dict({**base, **overrides})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(moe_router_score_function="sigmoid"), "moe_router_score_function"),
        (dict(moe_layer_freq=[1]), "per layer"),
        (dict(clip_qkv=8.0), "clip_qkv"),
    ],
)
def test_llada_moe_config_rejects_what_it_cannot_compute(overrides, message):
    base = json.loads((MOE_DIR / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        llada_hf.LLaDAConfig.from_dict({**base, **overrides})


# ---------------------------------------------------------------------------------------------------------------------
# Published LLaDA2.0 shapes


def closed_form_parameter_count(c: dict) -> tuple[int, int]:
    """(total, active per token) from the config values alone, written out independently of the model code.

    Embedding and untied head V*h each; final norm h; per layer: fused q/k/v h*(H+2K)*d, output H*d*h, q/k norms 2d,
    two layer norms 2h; dense layers a SwiGLU 3*h*I; MoE layers the router E*h, E experts 3*h*I_e each and the shared
    expert(s) 3*h*I_e*S (the expert bias is a buffer, not a parameter). Active: k of the E experts.
    """
    h, d, vocab = c["hidden_size"], c["head_dim"], c["vocab_size"]
    layers, dense = c["num_hidden_layers"], c["first_k_dense_replace"]
    attention = h * (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * d + c["num_attention_heads"] * d * h
    per_layer = attention + 2 * d + 2 * h
    expert = 3 * h * c["moe_intermediate_size"]
    moe_fixed = c["num_experts"] * h + expert * c["num_shared_experts"]
    common = 2 * vocab * h + h + layers * per_layer + dense * 3 * h * c["intermediate_size"]
    total = common + (layers - dense) * (moe_fixed + c["num_experts"] * expert)
    active = common + (layers - dense) * (moe_fixed + c["num_experts_per_tok"] * expert)
    return total, active


@pytest.mark.parametrize(
    "name, shape, counts, published",
    [
        # counts: the closed form below, evaluated once by hand; published: "16B total, 1.4B active" (mini) and
        # "100B total, 6.1B active" (flash), rounded numbers.
        ("inclusionAI/LLaDA2.0-mini", (20, 2048, 5120, 512, 16), (16_255_638_528, 1_432_968_192), (16e9, 1.4e9)),
        ("inclusionAI/LLaDA2.0-flash", (32, 4096, 9216, 1024, 32), (102_889_697_280, 6_152_269_824), (100e9, 6.1e9)),
    ],
)
def test_llada2_hub_configs_parameter_count(name, shape, counts, published):
    raw = json.loads(hub_config_path(name).read_text())
    config = load_hub_config(name)
    assert type(config) is llada_hf.LLaDA2MoeConfig
    layers, hidden, intermediate, expert, heads = shape
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (layers, hidden, intermediate)
    assert (config.moe_intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (expert, heads, 4)
    assert (config.num_experts, config.num_experts_per_tok, config.num_shared_experts) == (256, 8, 1)
    assert (config.n_group, config.topk_group, config.first_k_dense_replace) == (8, 4, 1)
    assert (config.head_dim, config.rotary_dim, config.rope_theta) == (128, 64, 600000)
    assert (config.vocab_size, config.pad_token_id, config.routed_scaling_factor) == (157184, 156892, 2.5)
    assert (config.mask_token_id, config.eos_token_id) == (156895, 156892)  # the official sampler's defaults
    with torch.device("meta"), no_init_weights():  # 15k-24k Linear modules: skip their (meta) init, ~2x faster
        model = llada_hf.LLaDA2MoeModelLM(config)
    assert closed_form_parameter_count(raw) == counts
    assert sum(p.numel() for p in model.parameters()) == counts[0]
    buffers = sum(b.numel() for n, b in model.named_buffers() if n.endswith("expert_bias"))
    assert buffers == (layers - 1) * 256
    assert counts[0] == pytest.approx(published[0], rel=0.05) and counts[1] == pytest.approx(published[1], rel=0.03)
