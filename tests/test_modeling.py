"""Foundation: config, bidirectional model, official checkpoint loading, exports, hub configs, tokenizer."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_DIR, forward_depth, fp32_tol, run_remote_code_check, tiny_config, tiny_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

import llada_hf
from llada_hf.export import export_official, export_remote_code
from llada_hf.hub import hub_config_path, list_hub_configs, load_hub_config
from llada_hf.tokenizer import build_tiny_tokenizer

ATTN = ["sdpa", "eager"]


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    """A folder with only the official config.json + model.safetensors (no remote code, no generation config)."""
    folder = tmp_path_factory.mktemp("official")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(GOLDEN_DIR / name, folder / name)
    return folder


@pytest.mark.parametrize("attn", ATTN)
def test_golden_forward_from_official_folder(official_dir, golden_cases, attn):
    model, info = AutoModel.from_pretrained(official_dir, attn_implementation=attn, output_loading_info=True)
    assert isinstance(model, llada_hf.LLaDAModelLM)  # AutoModel gives the head, like the official auto_map
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    case = golden_cases["forward"]
    logits = model.eval()(torch.tensor(case["input_ids"])).logits
    for (row, col), expected in zip(case["logits_sample"]["positions"], case["logits_sample"]["values"]):
        assert (logits[row, col] - torch.tensor(expected)).abs().max() <= 1e-5
    assert logits.argmax(-1).tolist() == case["argmax"]
    assert logits.double().sum().item() == pytest.approx(case["logits_sum"], abs=1e-2)


@pytest.mark.parametrize("attn", ATTN)
def test_left_padded_rows_match_unpadded(golden_dir, attn):
    model = AutoModel.from_pretrained(golden_dir, attn_implementation=attn).eval()
    generator = torch.Generator().manual_seed(0)
    lengths, width = [12, 7, 3], 12
    rows = [torch.randint(0, 1000, (n,), generator=generator) for n in lengths]
    batch = torch.stack([torch.cat([torch.full((width - len(r),), 1001), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]).long() for r in rows])
    padded = model(batch, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        assert (padded[i, width - len(row) :] - alone).abs().max() <= fp32_tol(
            alone, forward_depth(model.config, width)
        )
    # The mask matters: without it the pads are attended to and the short rows change.
    unmasked = model(batch).logits
    assert (unmasked[2, -3:] - model(rows[2][None]).logits[0]).abs().max() > 1e-4


def test_attention_is_bidirectional_and_backends_agree():
    model = tiny_model(seed=1)
    ids = torch.randint(0, 1000, (2, 16))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 1000
    out = model(ids).logits
    assert (out[:, 0] - model(changed).logits[:, 0]).abs().max() > 1e-6  # position 0 sees the last token
    model.set_attn_implementation("eager")
    assert (model(ids).logits - out).abs().max() <= fp32_tol(out, forward_depth(model.config, ids.shape[1]))


def test_bf16_close_to_fp32(golden_dir, golden_cases):
    ids = torch.tensor(golden_cases["forward"]["input_ids"])
    fp32 = AutoModel.from_pretrained(golden_dir).eval()(ids).logits
    bf16_model = AutoModel.from_pretrained(golden_dir, dtype=torch.bfloat16).eval()
    assert bf16_model.dtype == torch.bfloat16 and bf16_model.model.rotary_emb.cos_cached.dtype == torch.float32
    bf16 = bf16_model(ids).logits
    assert bf16.dtype == torch.bfloat16  # logits stay in the model dtype, as in the official code
    # Measured on this checkpoint: max abs 0.022 on logits of magnitude <= 1.6, relative norm 0.0097.
    assert (bf16.float() - fp32).abs().max() <= 0.05
    assert ((bf16.float() - fp32).norm() / fp32.norm()) <= 0.02
    # .to(bfloat16) casts buffers; the RoPE tables are rebuilt in fp32, so both routes agree exactly.
    cast = AutoModel.from_pretrained(golden_dir).to(torch.bfloat16).eval()
    assert torch.equal(cast(ids).logits, bf16)


def test_save_pretrained_round_trip_native_names(golden_model, tmp_path):
    golden_model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "lm_head.weight" in keys
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in saved  # the official remote-code pointers are not carried into a native save
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for (name, a), (_, b) in zip(golden_model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 1000, (1, 9))
    assert torch.equal(golden_model(ids).logits, reloaded.eval()(ids).logits)


def test_export_official_reproduces_official_files(golden_model, tmp_path):
    export_official(golden_model, tmp_path)
    official, exported = load_file(GOLDEN_DIR / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(official) == sorted(exported)
    assert all(torch.equal(official[k], exported[k]) for k in official)
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((GOLDEN_DIR / "config.json").read_text())


def test_remote_code_export_loads_without_llada_hf(golden_model, tmp_path):
    checkpoint = export_remote_code(golden_model, tmp_path / "ckpt")
    assert {p.name for p in checkpoint.glob("*.py")} == {
        "configuration_llada.py",
        "modeling_llada.py",
        "modeling_body.py",
        "generation_llada.py",
        "generation_config.py",
        "generation_parts.py",
        "generation_layout.py",
    }
    for path in checkpoint.glob("*.py"):  # hub files import only torch, transformers, the stdlib and their siblings
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")) and not line.startswith("from ."):
                module = line.split()[1].split(".")[0]
                assert module in {"torch", "transformers"} | set(sys.stdlib_module_names), line
    ids = [[5, 6, 7, 8]]
    expected = golden_model.generate(torch.tensor(ids), max_new_tokens=8, steps=8, block_length=4).tolist()
    lines = run_remote_code_check(checkpoint, ids, tmp_path)
    module, generation_class, tokens = lines[-3:]
    assert module.startswith("transformers_modules.")
    assert generation_class == "LLaDAGenerationConfig"
    assert json.loads(tokens) == expected


def test_auto_classes_registered(golden_dir):
    config = AutoConfig.from_pretrained(golden_dir)
    assert isinstance(config, llada_hf.LLaDAConfig)
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (64, 4, 2)
    assert (config.intermediate_size, config.tie_word_embeddings, config.mask_token_id) == (96, False, 1000)
    for auto_class in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
        assert type(auto_class.from_config(config)) is llada_hf.LLaDAModelLM
    llada_hf.register()  # idempotent


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=66, num_attention_heads=4), "divisible by num_attention_heads"),
        (dict(num_key_value_heads=3), "divisible by num_key_value_heads"),
        (dict(alibi=True), "alibi"),
        (dict(layer_norm_type="default"), "layer_norm_type"),
        (dict(include_bias=True), "include_bias"),
        (dict(mask_token_id=1001), "pad_token_id must differ"),
        (dict(mask_token_id=5000), r"^mask_token_id \(5000\) outside the vocabulary"),
        (dict(eos_token_id=1024), r"^eos_token_id \(1024\) outside the vocabulary"),
        (dict(eos_token_id=[1001, 2000]), r"^eos_token_id \(2000\) outside the vocabulary"),
        (dict(pad_token_id=-1), r"^pad_token_id \(-1\) outside the vocabulary"),
        (dict(bos_token_id=4096), r"^bos_token_id \(4096\) outside the vocabulary"),
        (dict(embedding_size=2048), "embedding_size"),
    ],
)
def test_config_rejects_what_it_cannot_compute(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_small_vocabulary_with_the_8b_special_ids_is_refused():
    """The trap: `LLaDAConfig(vocab_size=50)` keeps the 8B's special ids (126081, 126336) unless all are checked."""
    every = r"mask_token_id \(126336\), pad_token_id \(126081\), eos_token_id \(126081\) outside the vocabulary"
    with pytest.raises(ValueError, match=every):
        llada_hf.LLaDAConfig(vocab_size=50)
    with pytest.raises(ValueError, match=r"^pad_token_id \(126081\), eos_token_id \(126081\) outside"):
        llada_hf.LLaDAConfig(vocab_size=50, mask_token_id=49)
    config = llada_hf.LLaDAConfig(vocab_size=50, mask_token_id=49, eos_token_id=48, pad_token_id=48)
    assert config.bos_token_id is None


def test_labels_without_p_mask_are_refused():
    """The AR habit `model(ids, labels=ids)` (unshifted CE, no masking) must not silently train copying."""
    model = tiny_model()
    ids = torch.randint(0, 1000, (2, 8))
    with pytest.raises(ValueError, match="labels without p_mask.*pretraining_loss"):
        model(ids, labels=ids)
    loss = model(ids, labels=ids, p_mask=torch.full((2, 1), 0.5)).loss
    assert loss.item() > 0


def test_out_of_range_ids_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 1024]]))


def test_gradient_checkpointing_gives_same_gradients():
    ids = torch.randint(0, 1000, (2, 12))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=3).train()
        if checkpointing:  # 5.23 renamed it; keep both spellings working
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        model(ids).logits.float().pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[1].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=fp32_tol(grads[0], 2 * forward_depth(model.config, 12)))


def test_hidden_states_and_attentions_are_recorded():
    model = tiny_model()
    model.set_attn_implementation("eager")
    out = model(torch.randint(0, 1000, (1, 6)), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.attentions[0].shape == (1, 4, 6, 6)
    assert (out.attentions[0][0, 0].triu(1) > 0).any()  # future keys get weight: not causal


# ---------------------------------------------------------------------------------------------------------------------
# Hub configs

HUB_FILES = sorted((Path(__file__).parents[1] / "hub_configs").glob("*/*.json"))  # org/name.json


def test_hub_lists_every_file():
    assert len(HUB_FILES) >= 4
    assert len(list_hub_configs()) == len(HUB_FILES)
    for name in ("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-1.5", "llada_hf/tiny"):
        assert name in list_hub_configs()


@pytest.mark.parametrize("path", HUB_FILES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_hub_config_round_trips_shrinks_and_runs(path, tmp_path):
    name = path.relative_to(path.parents[1]).with_suffix("").as_posix()
    config = load_hub_config(name)
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert {**again.to_dict(), "_name_or_path": ""} == {**config.to_dict(), "_name_or_path": ""}
    small = load_hub_config(
        name, num_hidden_layers=1, hidden_size=32, intermediate_size=48, num_attention_heads=2, num_key_value_heads=2
    )
    assert small.vocab_size == config.vocab_size and small.mask_token_id == config.mask_token_id
    model = AutoModel.from_config(small).eval()  # LLaDAModelLM, or the LLaDA2.0 model for inclusionAI/*
    ids = torch.randint(0, min(small.vocab_size, 1000), (1, 5))
    assert model(ids).logits.shape == (1, 5, small.vocab_size)


def test_official_8b_configs_are_the_published_ones():
    published = [
        json.loads(hub_config_path(f"GSAI-ML/{n}").read_text()) for n in ("LLaDA-8B-Base", "LLaDA-8B-Instruct")
    ]
    published.append(json.loads(hub_config_path("GSAI-ML/LLaDA-1.5").read_text()))
    assert published[0] == published[1] == published[2]  # byte-identical on the hub
    assert len(published[0]) == 46 and set(published[0]) == set(json.loads((GOLDEN_DIR / "config.json").read_text()))
    config = load_hub_config("GSAI-ML/LLaDA-8B-Instruct")
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (4096, 32, 12288)
    assert (config.vocab_size, config.mask_token_id, config.eos_token_id) == (126464, 126336, 126081)
    with torch.device("meta"):
        model = llada_hf.LLaDAModelLM(config)
    # 6 official safetensors shards hold 16,031,162,368 bytes of bf16 = 2 x 8,015,581,184 parameters.
    assert sum(p.numel() for p in model.parameters()) == 8_015_581_184


def test_unknown_hub_name_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean: GSAI-ML/LLaDA-8B-Instruct"):
        load_hub_config("GSAI-ML/LLaDA-8B-Instrct")


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer


def test_tiny_tokenizer_chat_template_matches_spec(tmp_path):
    tokenizer = build_tiny_tokenizer(words=["hello"])
    question = "  What is 2+2?\n"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False)
    # The single-turn rendering given in the reference (llada.md, chat format), content trimmed.
    expected = (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert rendered == expected
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=True).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_tokens_to_ids("hello") in ids
    assert tokenizer("hello there").input_ids[0] != tokenizer.bos_token_id  # no BOS added on plain text
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.apply_chat_template([{"role": "user", "content": question}], tokenize=False) == expected
    assert reloaded.mask_token_id == 1000 and reloaded.eos_token_id == reloaded.pad_token_id == 1001
    for token, token_id in {"<|start_header_id|>": 1003, "<|end_header_id|>": 1004, "<|eot_id|>": 1005}.items():
        assert reloaded.convert_tokens_to_ids(token) == token_id


def test_official_keys_reach_the_derived_defaults(golden_dir):
    """An official config.json without `n_kv_heads` gets num_key_value_heads = its own `n_heads` (the aliases are
    applied before the defaults derived from them); a bare dict without `architectures` keeps the class defaults for
    what it leaves out, while a checkpoint's dict must give every shape key."""
    official = json.loads((golden_dir / "config.json").read_text())
    official.pop("n_kv_heads")
    config = llada_hf.LLaDAConfig.from_dict(official)
    assert config.num_key_value_heads == config.num_attention_heads == official["n_heads"]
    partial = llada_hf.LLaDAConfig.from_dict({"d_model": 64, "n_heads": 4, "vocab_size": 1024, "mask_token_id": 1000,
                                     "pad_token_id": 1001, "eos_token_id": 1001})  # fmt: skip
    assert partial.num_hidden_layers == llada_hf.LLaDAConfig().num_hidden_layers
    with pytest.raises(ValueError, match="n_layers"):
        llada_hf.LLaDAConfig.from_dict({key: value for key, value in official.items() if key != "n_layers"})


def test_llada21_hub_configs_are_llada20s_with_a_llada21_generation_config():
    """LLaDA2.1-mini/flash publish LLaDA2.0's config.json; their generation config picks the editing sampler."""
    from llada_hf.hub import load_hub_generation_config

    for size in ("mini", "flash"):
        assert load_hub_config(f"inclusionAI/LLaDA2.1-{size}").to_dict() | {"_name_or_path": ""} == load_hub_config(
            f"inclusionAI/LLaDA2.0-{size}"
        ).to_dict() | {"_name_or_path": ""}
        generation = load_hub_generation_config(f"inclusionAI/LLaDA2.1-{size}")
        generation.validate()
        assert generation.sampler == "llada2.1" and generation.mask_token_id == 156895
    with pytest.raises(ValueError, match="no generation config"):
        load_hub_generation_config("inclusionAI/LLaDA2.0-mini")
    with pytest.raises(ValueError, match="Unknown hub config"):
        load_hub_generation_config("inclusionAI/LLaDA2.1-maxi")
