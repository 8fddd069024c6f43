"""LLaDA2.0 and LLaDA-MoE through the package's training and scoring paths: `DiffusionTrainer` and the ELBO."""

import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from conftest import forward_depth, fp32_tol
from transformers import AutoModel, TrainingArguments

from llada_hf.likelihood import batch_log_likelihood, log_likelihood
from llada_hf.training import DiffusionCollator, DiffusionTrainer

FIXTURES = Path(__file__).parent / "fixtures"
FAMILY = {"llada2": FIXTURES / "llada2_tiny", "lladamoe": FIXTURES / "lladamoe_tiny"}
MASK, EOS = 1000, 1001


def rows(count: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 900, (count, 8), generator=generator).tolist()
    return [{"prompt_ids": row[:3], "answer_ids": row[3:]} for row in ids]


@pytest.mark.parametrize("family", FAMILY)
def test_diffusion_trainer_trains_every_part(family, tmp_path):
    model = AutoModel.from_pretrained(FAMILY[family])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1,
    )  # fmt: skip
    trainer = DiffusionTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows()),
        data_collator=DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS),
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss)) and result.training_loss > 0
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    for part in ("embed", "attn", "experts", "norm"):  # the body, attention, routed experts and norms all learnt
        assert any(part in name for name in changed), (part, sorted(changed)[:5])


def test_llada2_likelihood_batched_equals_official_path():
    """No official LLaDA2 likelihood exists; the package's estimator must at least agree with itself."""
    model = AutoModel.from_pretrained(FAMILY["llada2"]).eval()
    prompt, answer = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14]
    values = []
    for estimator in (log_likelihood, lambda *a, **k: batch_log_likelihood(model, [(a[1], a[2])], **k)[0]):
        torch.manual_seed(3)
        values.append(estimator(model, prompt, answer, mc_num=8, batch_size=4))
    depth = forward_depth(model.config, len(prompt) + len(answer), vocab=True) + 8
    assert values[0] == pytest.approx(values[1], rel=0, abs=fp32_tol(values[1], depth)) and values[0] < 0
    torch.manual_seed(3)
    wrong = log_likelihood(model, prompt, [900] * 6, mc_num=8, batch_size=4)
    assert wrong != pytest.approx(values[0], rel=1e-3)  # the answer matters


@pytest.mark.parametrize("family", ["llada", "llada2", "lladamoe"])
def test_llada_hf_train_full_and_lora_on_every_family(family, tmp_path, monkeypatch):
    """`llada-hf train` loads each family through `llada_hf.loading` (it used to hard-code LLaDA-8B's classes)."""
    from llada_hf.training import load_trained, train_main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    fixture = {"llada": FIXTURES / "golden_tiny", **FAMILY}[family]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows(6)))
    original = AutoModel.from_pretrained(fixture)
    before = original.state_dict()  # native names (the golden fixture is stored with the official ones)
    common = [
        "--model_name_or_path", str(fixture), "--train_file", str(data), "--max_steps", "2", "--learning_rate", "1e-2",
        "--per_device_train_batch_size", "3", "--save_strategy", "no", "--use_cpu", "--disable_tqdm", "true",
        "--report_to", "none", "--max_length", "16", "--seed", "0",
    ]  # fmt: skip
    prompt = torch.tensor([[5, 6, 7]])
    for variant, extra in (("full", []), ("lora", ["--use_peft", "--lora_r", "4"])):
        out = tmp_path / variant
        assert train_main([*common, "--output_dir", str(out), *extra]) == 0
        loss = json.loads((out / "train_results.json").read_text())["train_loss"]
        assert math.isfinite(loss) and loss > 0
        model = load_trained(out).eval()
        assert type(model) is type(original)
        after = model.state_dict()
        assert any(not torch.equal(after[name], tensor) for name, tensor in before.items())
        if variant == "lora":  # the adapter reloads onto the original base and equals the merged model
            adapted = load_trained(fixture, adapter=out / "adapter").eval()
            with torch.no_grad():
                merged, reloaded = model(input_ids=prompt).logits, adapted(input_ids=prompt).logits
            scale = merged.abs().max().item()
            assert (merged - reloaded).abs().max().item() <= 64 * torch.finfo(torch.float32).eps * max(scale, 1.0)
        generated = model.generate(prompt, max_new_tokens=8, steps=8, block_length=8)
        assert generated.shape == (1, 11) and torch.equal(generated[:, :3], prompt)
