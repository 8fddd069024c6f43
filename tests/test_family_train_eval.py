"""LLaDA2.0 and LLaDA-MoE through the package's training and scoring paths: `DiffusionTrainer` and the ELBO."""

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
