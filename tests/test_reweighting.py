"""Token-level loss reweighting (Ye et al. 2025): the focal weight against a float64 hand computation, its effect on
the gradient, its validation, and its route through `DiffusionTrainer` and `llada-hf train`."""

import json
import math

import pytest
import torch
from conftest import forward_depth, fp32_tol, tiny_model

from llada_hf.errors import UsageError
from llada_hf.training import DiffusionCollator, DiffusionTrainer, diffusion_loss, sft_loss, train_main

datasets = pytest.importorskip("datasets")
from transformers import TrainingArguments  # noqa: E402

MASK, EOS = 1000, 1001


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[torch.rand(3, 7, generator=g) < 0.4] = -100
    p_mask = torch.rand(3, 1, generator=g).clamp(min=0.1).expand(3, 7)
    return logits, labels, p_mask


@pytest.mark.parametrize(("gamma", "alpha", "normalizer"), [(0.0, 1.0, None), (2.0, 0.25, None), (1.5, 1.0, "rows")])
def test_reweighted_loss_matches_a_float64_hand_computation(gamma, alpha, normalizer):
    logits, labels, p_mask = _case()
    norm = torch.tensor([5.0, 3.0, 7.0]) if normalizer else None
    got = diffusion_loss(logits, labels, p_mask, norm, reweight_gamma=gamma, reweight_alpha=alpha)
    probs = torch.softmax(logits.double(), -1)
    total = 0.0
    for i in range(3):
        row = 0.0
        for j in range(7):
            if labels[i, j] == -100:
                continue
            p = float(probs[i, j, labels[i, j]])
            row += alpha * (1 - p) ** gamma * -math.log(p) / float(p_mask[i, j])
        total += row / float(norm[i]) if norm is not None else row
    expected = total / 3 if norm is not None else total / 21
    assert float(got) == pytest.approx(expected, rel=0, abs=fp32_tol(expected, 11 + 21))  # softmax over 11, 21 terms


def test_reweighting_moves_the_gradient_toward_hard_tokens():
    """One easy (p ~ 0.9) and one hard (p ~ 0.1) token: gamma = 2 raises the hard token's share of the gradient."""
    base = torch.zeros(1, 2, 3)
    base[0, 0] = torch.tensor([math.log(9.0), 0.0, 0.0]) + math.log(0.5)  # p(label 0) = 9 / 11
    base[0, 1] = torch.tensor([0.0, math.log(9.0), math.log(9.0)])  # p(label 0) = 1 / 19
    labels, p_mask = torch.tensor([[0, 0]]), torch.ones(1, 2)
    shares = []
    for gamma in (0.0, 2.0):
        logits = base.clone().requires_grad_(True)
        diffusion_loss(logits, labels, p_mask, reweight_gamma=gamma).backward()
        easy, hard = logits.grad[0].norm(dim=-1)
        shares.append(float(hard / (hard + easy)))
    assert shares[1] > shares[0] + 0.1, shares


@pytest.mark.parametrize(("gamma", "alpha"), [(float("nan"), 1.0), (-1.0, 1.0), (float("inf"), 1.0), (2.0, 0.0)])
def test_bad_reweighting_values_are_refused(gamma, alpha):
    logits, labels, p_mask = _case()
    with pytest.raises(ValueError, match="reweight_"):
        diffusion_loss(logits, labels, p_mask, reweight_gamma=gamma, reweight_alpha=alpha)
    with pytest.raises(ValueError, match="reweight_"):
        sft_loss(tiny_model(0), torch.full((2, 6), 5), [2, 2], reweight_gamma=gamma, reweight_alpha=alpha)
    collator = DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS)
    with pytest.raises(ValueError, match="reweight_"):
        DiffusionTrainer(model=tiny_model(0), data_collator=collator, reweight_gamma=gamma, reweight_alpha=alpha)


def test_trainer_trains_reweighted_and_evaluates_the_plain_loss(tmp_path):
    """Same weights and noise: the reweighted training loss is below the plain one (weights < 1), eval_loss equal."""
    rows = [{"prompt_ids": [5 + i % 7, 9], "answer_ids": [20 + i % 5, 30 + i % 3, EOS]} for i in range(16)]
    losses, evals = {}, {}
    for gamma in (0.0, 2.0):
        args = TrainingArguments(
            output_dir=str(tmp_path / f"g{gamma}"), max_steps=1, per_device_train_batch_size=8, learning_rate=1e-3,
            report_to=[], use_cpu=True, seed=0, logging_steps=1, save_strategy="no", disable_tqdm=True,
        )  # fmt: skip
        trainer = DiffusionTrainer(
            model=tiny_model(0), args=args, train_dataset=datasets.Dataset.from_list(rows),
            eval_dataset=datasets.Dataset.from_list(rows[:8]),
            data_collator=DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS), reweight_gamma=gamma,
        )  # fmt: skip
        evals[gamma] = trainer.evaluate()["eval_loss"]
        trainer.train()
        losses[gamma] = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
    depth = forward_depth(tiny_model().config, vocab=True)  # the same forward; only the loss weighting differs
    assert evals[2.0] == pytest.approx(evals[0.0], rel=0, abs=fp32_tol(evals[0.0], depth))
    assert 0 < losses[2.0] < losses[0.0]


def test_cli_flag_reaches_the_model_card_and_a_bad_value_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": str(i), "answer": str(i)}) + "\n" for i in range(8)))
    argv = [
        "--model_name_or_path", "tiny", "--train_file", str(data), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--use_cpu",
        "--disable_tqdm", "true", "--report_to", "none", "--max_length", "64",
    ]  # fmt: skip
    assert train_main([*argv, "--reweight_gamma", "2", "--reweight_alpha", "0.25"]) == 0
    card = (tmp_path / "run" / "README.md").read_text()
    assert "token-level reweighting" in card and "alpha 0.25, gamma 2.0" in card
    with pytest.raises(UsageError, match=r"^--reweight_gamma") as caught:  # the CLI prints it as one line, exit 2
        train_main([*argv, "--reweight_gamma", "nan", "--output_dir", str(tmp_path / "bad")])
    assert len(str(caught.value).splitlines()) == 1 and not (tmp_path / "bad").exists()
