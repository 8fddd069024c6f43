"""Training: losses against hand computation, the noising collator, Trainer integration (GA, checkpointing, resume,
DDP), LoRA, AR->diffusion conversion and the CLI. Tiny models on CPU; expected values are recomputed independently."""

import dataclasses
import importlib.util
import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import forward_depth, fp32_tol, tiny_config, tiny_model

import llada_hf
from llada_hf.loading import ModelLoadError
from llada_hf.training import (
    DEFAULT_LORA_TARGETS,
    EVAL_EPOCH,
    DataError,
    DiffusionCollator,
    DiffusionTrainer,
    annealed_attention_mask,
    convert_llama_to_llada,
    diffusion_loss,
    encode_example,
    forward_process,
    get_lora_model,
    load_model,
    load_trained,
    mask_batch,
    pack_sequences,
    prepare_dataset,
    pretraining_loss,
    sample_seed,
    save_trained,
    sft_loss,
    train_main,
)

datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")
from huggingface_hub import ModelCard  # noqa: E402
from transformers import TrainerCallback, TrainingArguments  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MASK, EOS, BOS = 1000, 1001, 1002


pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name: str):
    """Import a module from scripts/ (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkpointing_flag() -> dict:
    """`activation_checkpointing` on transformers 5.23, `gradient_checkpointing` before."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return (
        {"activation_checkpointing": True} if "activation_checkpointing" in names else {"gradient_checkpointing": True}
    )


def _args(tmp_path, **kwargs) -> TrainingArguments:
    params = dict(
        output_dir=str(tmp_path / "out"), learning_rate=1e-3, warmup_steps=0, save_strategy="no", report_to=[],
        disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1, max_grad_norm=0.0,
    )  # fmt: skip
    params.update(kwargs)
    return TrainingArguments(**params)


def _toy_rows(count: int = 16, seed: int = 0) -> list[dict]:
    return _script("train_ddp_check").toy_rows(count, seed)


def _hand_loss(model, ids, draws_t, draws_u, eps, prompt_lengths=None, normalizers=None):
    """Explicit loops: mask where u < (1 - eps) t + eps (answers only), CE from float64 log-softmax, weighted sum."""
    b, length = ids.shape
    noisy = ids.clone()
    masked = []
    for i in range(b):
        p = (1 - eps) * float(draws_t[i]) + eps
        for j in range(length):
            in_answer = prompt_lengths is None or j >= prompt_lengths[i]
            if in_answer and float(draws_u[i, j]) < p:
                noisy[i, j] = MASK
                masked.append((i, j, p))
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=noisy).logits.double(), dim=-1)
    total = 0.0
    for i, j, p in masked:
        n = normalizers[i] if normalizers is not None else 1.0
        total += -float(log_probs[i, j, ids[i, j]]) / p / n
    return total / b if normalizers is not None else total / (b * length), len(masked)


# ---------------------------------------------------------------------------------------------------------------------
# Losses


@pytest.mark.parametrize("random_length_prob", [0.0, 0.01, 1.0])
def test_pretraining_loss_matches_hand_computation(random_length_prob):
    model = tiny_model(0)
    ids = torch.randint(0, 900, (3, 12), generator=torch.Generator().manual_seed(1))
    eps = 0.05
    loss = pretraining_loss(
        model, ids, eps=eps, random_length_prob=random_length_prob, generator=torch.Generator().manual_seed(7)
    )
    # The documented draw order: rand(1) [, randint] (only with a positive probability), rand(b), rand(b, l).
    g = torch.Generator().manual_seed(7)
    if random_length_prob > 0 and torch.rand(1, generator=g).item() < random_length_prob:
        ids = ids[:, : int(torch.randint(1, ids.shape[1] + 1, (1,), generator=g))]
    draws_t = torch.rand(ids.shape[0], generator=g)
    draws_u = torch.rand(ids.shape, generator=g)
    expected, n_masked = _hand_loss(model, ids, draws_t, draws_u, eps)
    assert n_masked > 0
    assert math.isclose(
        loss.item(), expected, abs_tol=fp32_tol(expected, forward_depth(model.config, ids.shape[1], vocab=True))
    )
    if random_length_prob == 1.0:
        assert ids.shape[1] < 12  # the cut happened (seeded), so the crop path was compared


def test_sft_loss_matches_hand_computation():
    model = tiny_model(0)
    ids = torch.randint(0, 900, (3, 10), generator=torch.Generator().manual_seed(2))
    ids[0, 8:] = EOS  # EOS padding is an ordinary answer target
    prompt_lengths = [2, 4, 6]
    loss = sft_loss(model, ids, prompt_lengths, eps=0.1, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    draws_t, draws_u = torch.rand(3, generator=g), torch.rand((3, 10), generator=g)
    answer_lengths = [10 - p for p in prompt_lengths]
    expected, n_masked = _hand_loss(model, ids, draws_t, draws_u, 0.1, prompt_lengths, answer_lengths)
    assert n_masked > 0
    assert math.isclose(
        loss.item(), expected, abs_tol=fp32_tol(expected, forward_depth(model.config, ids.shape[1], vocab=True))
    )


def test_sft_prompt_is_never_masked_and_cannot_affect_the_loss():
    ids = torch.randint(0, 900, (4, 9), generator=torch.Generator().manual_seed(0))
    prompt_lengths = torch.tensor([1, 3, 5, 8])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        noisy, labels, _ = forward_process(ids, MASK, eps=0.5, generator=g, prompt_lengths=prompt_lengths)
        prompt = torch.arange(9)[None, :] < prompt_lengths[:, None]
        assert torch.equal(noisy[prompt], ids[prompt]) and bool((labels[prompt] == -100).all())
    # eps = 1 masks every answer token.
    noisy, labels, p_mask = forward_process(ids, MASK, eps=1.0, generator=g, prompt_lengths=prompt_lengths)
    assert bool((noisy[~prompt] == MASK).all()) and torch.equal(labels[~prompt], ids[~prompt])

    normalizer = (9 - prompt_lengths).float()
    logits = torch.randn(4, 9, 1024, generator=g)
    loss = diffusion_loss(logits, labels, p_mask, normalizer)
    # Prompt predictions (logits) and whatever the prompt's targets would be do not enter the loss ...
    changed = logits.clone()
    changed[prompt] = torch.randn(int(prompt.sum()), 1024, generator=g) * 10
    assert diffusion_loss(changed, labels, p_mask, normalizer).item() == loss.item()
    ids2 = ids.clone()
    ids2[prompt] = (ids2[prompt] + 1) % 900
    _, labels2, _ = forward_process(ids2, MASK, eps=1.0, generator=g, prompt_lengths=prompt_lengths)
    assert torch.equal(labels2, labels)
    # ... while one answer logit does.
    changed = logits.clone()
    changed[0, 5, labels[0, 5]] += 3.0
    assert diffusion_loss(changed, labels, p_mask, normalizer).item() < loss.item()


def test_model_forward_loss_equals_pretraining_normalisation():
    """The model's built-in loss (sum CE / p_mask / numel) is `diffusion_loss` without a normaliser."""
    model = tiny_model(0)
    ids = torch.randint(0, 900, (2, 8), generator=torch.Generator().manual_seed(0))
    noisy, labels, p_mask = forward_process(ids, MASK, generator=torch.Generator().manual_seed(0))
    out = model(input_ids=noisy, labels=labels, p_mask=p_mask)
    depth = forward_depth(model.config, 8, vocab=True)  # same logits; only the loss reduction may differ
    assert torch.allclose(out.loss, diffusion_loss(out.logits, labels, p_mask), rtol=0, atol=fp32_tol(out.loss, depth))


def test_pretraining_loss_hides_padding_with_an_attention_mask():
    """Padded positions are not attended, never masked, not targets; row i is normalised by its own length."""
    model = tiny_model(0)
    ids = torch.randint(0, 900, (2, 10), generator=torch.Generator().manual_seed(4))
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 6:] = 0
    ids[1, 6:] = EOS
    loss = pretraining_loss(
        model, ids, attention_mask=attention_mask, eps=0.3, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    draws_t, draws_u = torch.rand(2, generator=g), torch.rand((2, 10), generator=g)
    total = 0.0
    for i, length in enumerate((10, 6)):  # each row alone, unpadded: what the padded batch must reproduce
        row, p = ids[i : i + 1, :length].clone(), 0.7 * float(draws_t[i]) + 0.3
        masked = [j for j in range(length) if float(draws_u[i, j]) < p]
        assert masked
        row[0, masked] = MASK
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=row).logits.double(), dim=-1)
        total += sum(-float(log_probs[0, j, ids[i, j]]) / p for j in masked) / length
    assert math.isclose(
        loss.item(), total / 2, abs_tol=fp32_tol(total / 2, forward_depth(model.config, 10, vocab=True))
    )


def test_pretraining_loss_and_trainer_default_to_the_same_length_rule(tmp_path):
    default = inspect.signature(pretraining_loss).parameters["random_length_prob"].default
    trainer = DiffusionTrainer(
        model=tiny_model(0), args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
        data_collator=DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS, mode="pretrain"),
    )  # fmt: skip
    assert default == (trainer.args.random_length_prob or 0.0) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Data


def _indexed(rows: list[dict]) -> list[dict]:
    return [dict(row, sample_index=i) for i, row in enumerate(rows)]


def test_collator_pads_with_eos_and_keeps_prompts_unmaskable():
    rows = _indexed(
        [{"prompt_ids": [BOS, 5, 6], "answer_ids": [7, 8, 9]}, {"prompt_ids": [BOS, 5], "answer_ids": [7]}]
    )
    collator = DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS)
    batch = collator(rows)
    clean = torch.tensor([[BOS, 5, 6, 7, 8, 9, EOS], [BOS, 5, 7, EOS, EOS, EOS, EOS]])
    assert "attention_mask" not in batch  # SFT padding is attended and a target
    assert torch.equal(batch["input_ids"], clean)  # no noise here: workers cannot change it
    assert (batch["labels"] != -100).tolist() == [[j >= 3 for j in range(7)], [j >= 2 for j in range(7)]]
    assert batch["sample_index"].tolist() == [0, 1]
    assert torch.equal(collator(rows)["input_ids"], batch["input_ids"])


def test_mask_batch_matches_its_documented_seeding():
    """Row i uses Generator(seeds[i]): rand(1) -> t, rand(l) -> mask; n_i = the maskable positions."""
    collator = DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS)
    batch = collator(
        _indexed([{"prompt_ids": [BOS, 5, 6], "answer_ids": [7, 8, 9]}, {"prompt_ids": [BOS, 5], "answer_ids": [7]}])
    )
    seeds = [sample_seed(11, index, 3) for index in (0, 1)]
    noised = mask_batch(batch["input_ids"], batch["labels"], MASK, seeds, eps=0.2)
    assert torch.equal(noised["loss_normalizer"], torch.tensor([4.0, 5.0]))
    assert noised["attention_mask"] is None
    for i, prompt_length in enumerate([3, 2]):
        g = torch.Generator().manual_seed(seeds[i])
        p = 0.8 * torch.rand(1, generator=g).item() + 0.2
        u = torch.rand(7, generator=g)
        expected = [j >= prompt_length and u[j].item() < p for j in range(7)]
        assert (noised["labels"][i] != -100).tolist() == expected
        assert torch.equal(noised["input_ids"][i] == MASK, torch.tensor(expected))
        assert torch.allclose(noised["p_mask"][i], torch.full((7,), p))
    assert len({sample_seed(0, 5, epoch) for epoch in (0, 1, EVAL_EPOCH)} | {sample_seed(0, 6, 0)}) == 4


def test_noise_depends_only_on_row_index_and_epoch():
    """A row's noise is the same whichever batch, position or padded length it comes in (GA, DDP, workers)."""
    rows = _indexed([{"input_ids": r["prompt_ids"] + r["answer_ids"]} for r in _toy_rows(6)])
    collator = DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS, mode="pretrain")

    def noise(part, epoch=0):
        batch = collator(part)
        seeds = [sample_seed(3, index, epoch) for index in batch["sample_index"].tolist()]
        out = mask_batch(batch["input_ids"], batch["labels"], MASK, seeds, attention_mask=batch.get("attention_mask"),
                         random_length_prob=0.5)  # fmt: skip
        return {
            index: (out["input_ids"][k, :n].tolist(), out["loss_normalizer"][k].item())
            for k, (index, n) in enumerate(zip(batch["sample_index"].tolist(), (len(r["input_ids"]) for r in part)))
        }

    whole = noise(rows)
    assert noise(rows[:2]) | noise(rows[2:4]) | noise(rows[4:]) == whole  # GA halves / ranks
    assert noise(rows[::-1]) == whole  # another order (another worker, another batch)
    assert noise(rows, epoch=1) != whole  # a new epoch draws new masks
    assert any(n < len(r["input_ids"]) for r, (_, n) in zip(rows, whole.values()))  # the length rule cut a row


def test_pretrain_collator_hides_padding_and_mask_batch_cuts_rows():
    rows = [{"input_ids": list(range(10, 20))}, {"input_ids": list(range(10, 14))}]
    batch = DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS, mode="pretrain")(rows)
    assert batch["attention_mask"].sum(-1).tolist() == [10, 4] and "sample_index" not in batch
    noised = mask_batch(
        batch["input_ids"], batch["labels"], MASK, [2, 3], attention_mask=batch["attention_mask"], eps=0.99,
        random_length_prob=1.0,
    )  # fmt: skip
    valid = noised["attention_mask"].sum(-1)
    assert torch.equal(noised["loss_normalizer"], valid.float())
    assert bool((valid <= torch.tensor([10, 4])).all()) and bool((valid >= 1).all()) and valid.sum() < 14
    hidden = noised["attention_mask"] == 0
    assert bool((noised["labels"][hidden] == -100).all()) and not bool((noised["input_ids"][hidden] == MASK).any())
    assert pack_sequences([[1, 2, 3], [4, 5], [6]], 4) == [[1, 2, 3, 4], [5, 6]]


def _tokenizer():
    return pytest.importorskip("llada_hf.tokenizer").build_tiny_tokenizer()


def test_encode_example_uses_the_chat_template():
    tokenizer = _tokenizer()
    ids, prompt_length = encode_example({"prompt": "What is 2+2?", "answer": " 4 "}, tokenizer)
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(ids[:prompt_length]) == prompt_text
    assert tokenizer.decode(ids[prompt_length:]) == "4<|eot_id|><|endoftext|>"
    chat = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}
    assert encode_example(chat, tokenizer) == (ids, prompt_length)
    text_ids, zero = encode_example({"text": "ab"}, tokenizer)
    assert (text_ids, zero) == ([97, 98, EOS], 0)


def test_encode_example_accepts_trl_formats_and_names_bad_fields():
    tokenizer = _tokenizer()
    # TRL standard prompt-completion: plain text, no template, EOS after the completion.
    assert encode_example({"prompt": "ab", "completion": "c"}, tokenizer) == ([97, 98, 99, EOS], 2)
    # TRL conversational prompt-completion = our chat rows.
    user, answer = {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}
    conversational = {"prompt": [user], "completion": [answer]}
    assert encode_example(conversational, tokenizer) == encode_example({"messages": [user, answer]}, tokenizer)
    bad = [
        ({"prompt": "x", "answer": None}, "missing field 'completion' (or 'answer')"),
        ({"prompt": "x", "answer": 5}, "field 'answer' must be a string"),
        ({"answer": "x"}, "missing field 'prompt'"),
        ({"prompt_ids": [1, 2]}, "missing field 'answer_ids'"),
        ({"messages": [user]}, "must end with the assistant answer"),
        ({"question": "x"}, "no recognised fields"),
        ({"prompt": [user], "completion": "4"}, "field 'completion' must be a non-empty list"),
        ({"prompt": "x", "completion": 5}, "field 'completion' must be a string, got int"),
    ]
    for row, message in bad:
        with pytest.raises(DataError, match=re.escape(message)):
            encode_example(row, tokenizer)


def test_prepare_dataset_tokenises_once_counts_cuts_and_refuses_empty_results(caplog):
    tokenizer = _tokenizer()
    rows = [{"prompt": "ab", "completion": "cdef"}, {"prompt": "abcdefgh", "completion": "x"}, {"text": "abcdefghij"}]
    prepared, report = prepare_dataset(rows, tokenizer, max_length=6)
    assert prepared.column_names == ["input_ids", "prompt_length", "sample_index"]
    assert prepared["input_ids"] == [[97, 98, 99, 100, 101, 102], [97, 98, 99, 100, 101, 102]]
    assert prepared["sample_index"] == [0, 1]
    assert (report.rows, report.kept, report.cut, report.dropped) == (3, 2, 2, 1)
    assert "1 dropped" in caplog.text and "2 longer than max_length 6 were cut" in caplog.text
    packed, report = prepare_dataset(rows, tokenizer, mode="pretrain", max_length=6, packing=True)
    assert [len(ids) for ids in packed["input_ids"]] == [6, 6, 6, 6, 4] and report.cut == report.dropped == 0
    with pytest.raises(DataError, match="nothing to train on: all 1 rows"):
        prepare_dataset(rows[1:2], tokenizer, max_length=6)
    invalid = r"train: 2 invalid row\(s\) of 3: train row 1: missing field 'prompt'; train row 2: no recognised"
    with pytest.raises(DataError, match=invalid):
        prepare_dataset([{"text": "a"}, {"completion": "b"}, {"question": "c"}], tokenizer)
    with pytest.raises(DataError, match="no rows"):
        prepare_dataset([], tokenizer)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer integration


class _GradRecorder(TrainerCallback):
    def __init__(self):
        self.grads, self.losses = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _train(tmp_path, model, rows, collator, **kwargs):
    recorder = _GradRecorder()
    trainer = DiffusionTrainer(
        model=model,
        args=_args(tmp_path, **kwargs),
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=collator,
        callbacks=[recorder],
    )
    trainer.train(resume_from_checkpoint=kwargs.get("resume_from_checkpoint"))
    return trainer, recorder


def test_trainer_turns_off_column_removal_and_never_masks_prompts(tmp_path):
    """The default `remove_unused_columns=True` would drop prompt_ids/answer_ids (not forward arguments)."""
    trainer = DiffusionTrainer(
        model=tiny_model(0),
        args=_args(tmp_path, per_device_train_batch_size=4, max_steps=1),
        train_dataset=datasets.Dataset.from_list(_toy_rows(8)),
        data_collator=DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS),
    )
    assert not trainer.args.remove_unused_columns
    assert trainer.train_dataset.column_names == ["input_ids", "prompt_length", "sample_index"]
    batch = next(iter(trainer.get_train_dataloader()))
    rows = _toy_rows(8)
    for ids, labels, index in zip(batch["input_ids"], batch["labels"], batch["sample_index"]):
        prompt = rows[int(index)]["prompt_ids"]
        assert ids[: len(prompt)].tolist() == prompt and bool((labels[: len(prompt)] == -100).all())
    noised = mask_batch(batch["input_ids"], batch["labels"], MASK, range(4), eps=1.0)
    assert bool(((noised["input_ids"] == MASK) == (batch["labels"] != -100)).all())  # eps 1: every answer token


def test_trainer_overrides_only_public_trainer_methods():
    """Issue 14: no overrides of private Trainer methods (`_remove_unused_columns`, `_get_dataloader`, ...)."""
    from transformers import Trainer

    overridden = {name for name in vars(DiffusionTrainer) if callable(getattr(Trainer, name, None))}
    assert overridden == {"__init__", "compute_loss", "prediction_step", "create_model_card"}


def test_dataloader_workers_do_not_change_the_noise(tmp_path):
    """Issue 14: with 2 workers each worker copied the collator's call counter, so batches 0 and 1 got the same
    noise. The noise is now keyed by the row's index and the epoch: same losses and weights with 0 or 2 workers."""
    rows = _toy_rows(16)
    collator = dict(mask_token_id=MASK, pad_token_id=EOS, max_length=12, pad_to_max_length=True)
    runs = []
    for workers in (0, 2):
        model = tiny_model(0)
        _, recorder = _train(
            tmp_path, model, rows, DiffusionCollator(**collator), max_steps=6, per_device_train_batch_size=4,
            dataloader_num_workers=workers,
        )  # fmt: skip
        runs.append((recorder.losses, model.state_dict()))
    (losses, weights), (losses_workers, weights_workers) = runs
    assert len(losses) == 6 and len(set(losses)) == 6 and losses_workers == losses
    for name, value in weights.items():
        assert torch.equal(weights_workers[name], value), name


@pytest.mark.parametrize("mode", ["sft", "pretrain"])
def test_gradient_accumulation_equals_big_batch(tmp_path, mode):
    """Gradients agree to float32 reduction noise (1e-6 relative to the largest entry; the 1/p_mask weights make them
    large). SGD, so that the weights compare the updates themselves: Adam's m / sqrt(v) turns reduction noise on
    near-zero gradients into differences of order lr."""
    collator = dict(mask_token_id=MASK, pad_token_id=EOS, mode=mode, max_length=12, pad_to_max_length=True)
    if mode == "pretrain":
        collator.update(random_length_prob=0.3, pad_to_max_length=False)
    rows = (
        _toy_rows(16) if mode == "sft" else [{"input_ids": r["prompt_ids"] + r["answer_ids"]} for r in _toy_rows(16)]
    )
    runs = []
    for batch, accumulation in ((8, 1), (4, 2), (2, 4)):
        model = tiny_model(0)
        _, recorder = _train(
            tmp_path, model, rows, DiffusionCollator(**collator), max_steps=2, optim="sgd",
            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        )  # fmt: skip
        runs.append((recorder, model))
    (reference, ref_model), others = runs[0], runs[1:]
    for recorder, model in others:
        for step in range(2):
            for name, grad in reference.grads[step].items():
                tolerance = fp32_tol(grad, 2 * forward_depth(model.config, vocab=True))  # forward + backward
                assert (recorder.grads[step][name] - grad).abs().max().item() <= tolerance, (step, name)
        depth = 2 * forward_depth(model.config, vocab=True)  # two steps: the second sees the first's update
        assert recorder.losses == pytest.approx(reference.losses, rel=0, abs=fp32_tol(max(reference.losses), depth))
        for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
            assert torch.allclose(a, b, rtol=0, atol=fp32_tol(a, 2 * forward_depth(model.config, vocab=True))), name


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    rows = _toy_rows(8)
    collator = dict(mask_token_id=MASK, pad_token_id=EOS, max_length=12, pad_to_max_length=True)
    results = []
    for flags in ({}, _checkpointing_flag()):
        for lora in (False, True):
            model = tiny_model(0)
            if lora:
                model = get_lora_model(model, r=4, init_lora_weights=False)  # nonzero B: every LoRA grad is nonzero
            _, recorder = _train(
                tmp_path,
                model,
                rows,
                DiffusionCollator(**collator),
                max_steps=1,
                per_device_train_batch_size=8,
                **flags,
            )
            results.append(recorder.grads[0])
    plain_full, plain_lora, ckpt_full, ckpt_lora = results
    assert len(plain_lora) == 4 * 7 and all("lora_" in name for name in plain_lora)  # 2 layers x 7 projections x A, B
    assert all(grad.abs().sum() > 0 for grad in ckpt_lora.values())
    for plain, ckpt in ((plain_full, ckpt_full), (plain_lora, ckpt_lora)):
        assert plain.keys() == ckpt.keys()
        for name in plain:
            atol = fp32_tol(plain[name], 2 * forward_depth(tiny_config(), vocab=True))  # recomputed forward + backward
            assert torch.allclose(plain[name], ckpt[name], rtol=0, atol=atol), name


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    """Pre-training, ragged rows, the length rule; 5 batches per epoch with GA 2 (the last update of each epoch has one
    batch), so the collator's position after resuming is not simply steps x GA. The checkpoint is in epoch 2."""
    rows = [{"input_ids": r["prompt_ids"] + r["answer_ids"]} for r in _toy_rows(10)]
    collator = dict(mask_token_id=MASK, pad_token_id=EOS, mode="pretrain", random_length_prob=0.3)
    common = dict(max_steps=7, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    full_model = tiny_model(0)
    _, full = _train(tmp_path / "a", full_model, rows, DiffusionCollator(**collator), **common)
    _, first = _train(
        tmp_path / "b", tiny_model(0), rows, DiffusionCollator(**collator), save_strategy="steps", save_steps=4,
        **common,
    )  # fmt: skip
    checkpoint = tmp_path / "b" / "out" / "checkpoint-4"
    assert checkpoint.is_dir()
    resumed_model = tiny_model(1)  # weights come from the checkpoint
    _, resumed = _train(
        tmp_path / "b", resumed_model, rows, DiffusionCollator(**collator), resume_from_checkpoint=str(checkpoint),
        **common,
    )  # fmt: skip
    tol = fp32_tol(max(full.losses), 2 * forward_depth(tiny_config(), vocab=True))
    assert len(full.losses) == 7 and first.losses[:4] == pytest.approx(full.losses[:4], rel=0, abs=tol)
    assert resumed.losses == pytest.approx(full.losses[4:], rel=0, abs=tol)
    assert len(set(full.losses)) == 7  # fresh noise every step
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=fp32_tol(a, 7 * 2 * forward_depth(tiny_config(), vocab=True))), name


def test_evaluation_loss_is_deterministic_and_training_lowers_it(tmp_path):
    rows = _toy_rows(16)
    trainer = DiffusionTrainer(
        model=tiny_model(0),
        args=_args(tmp_path, max_steps=30, per_device_train_batch_size=8, learning_rate=3e-3),
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=datasets.Dataset.from_list(rows),
        data_collator=DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS, max_length=12, pad_to_max_length=True),
    )
    before = trainer.evaluate()["eval_loss"]
    assert trainer.evaluate()["eval_loss"] == before
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < 0.8 * before


def test_torchrun_two_processes_equal_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "scripts" / "train_ddp_check.py"), "--out", str(out), "--per-device-batch", "2", "--steps", "3",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = torch.load(out)
    single = _script("train_ddp_check").train(per_device_batch=4, steps=3)
    initial = tiny_model(0).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in single)
    assert moved > 1e-4  # training changed the weights ...
    for name, value in single.items():  # ... identically, up to the order of float reductions
        atol = fp32_tol(value, 3 * 2 * forward_depth(tiny_config(), vocab=True))  # 3 steps of forward + backward
        assert torch.allclose(distributed[name], value, rtol=0, atol=atol), name


# ---------------------------------------------------------------------------------------------------------------------
# LoRA


def test_lora_targets_are_projections_only():
    model = get_lora_model(tiny_model(0), r=4)
    adapted = {name.split(".lora_")[0] for name, _ in model.named_parameters() if ".lora_" in name}
    blocks = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
    expected = {
        f"base_model.model.model.layers.{i}.{blocks.get(name, 'mlp')}.{name}"
        for i in range(2)
        for name in DEFAULT_LORA_TARGETS
        if name != "qkv_proj"  # LLaDA2's fused projection: not in this family
    }
    assert adapted == expected
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    all_linear = get_lora_model(tiny_model(0), r=4, target_modules="all-linear")
    assert not any("lm_head.lora" in name for name, _ in all_linear.named_parameters())


def test_lora_toy_task_learns_merges_saves_and_generates(tmp_path):
    """Tiny base trained on copying digits; a LoRA adapter then learns 'add 1 to each digit' (held-out strings)."""
    toy = _script("train_toy")
    train, held = toy.digit_strings(3)
    torch.manual_seed(0)
    model = llada_hf.LLaDAModelLM(tiny_config())
    toy.pretrain_copy(model, train, steps=300, output_dir=str(tmp_path))
    model.save_pretrained(tmp_path / "base")  # before peft injects its layers into the module tree
    base_logits_probe = torch.tensor([toy.sft_row("shift", x)["prompt_ids"] + [MASK] * 5 for x in held[:8]])
    with torch.no_grad():
        base_logits = model.eval()(input_ids=base_logits_probe).logits
    peft_model, before, after = toy.lora_finetune(model, "shift", train, held, steps=300, output_dir=str(tmp_path))
    assert after < 0.5 * before, (before, after)
    accuracy = toy.accuracy(peft_model, "shift", held)
    assert accuracy >= 0.8, accuracy  # generate() through the peft wrapper

    peft_model.eval()
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=base_logits_probe).logits
        assert (adapter_logits - base_logits).abs().max() > 1e-2  # the adapter changed the function
        peft_model.save_pretrained(tmp_path / "adapter")
        reloaded = load_trained(tmp_path / "base", adapter=tmp_path / "adapter").eval()
        tol = fp32_tol(adapter_logits, forward_depth(model.config, base_logits_probe.shape[1]))
        assert (reloaded(input_ids=base_logits_probe).logits - adapter_logits).abs().max() <= tol
        merged = peft_model.merge_and_unload().eval()
        assert type(merged) is llada_hf.LLaDAModelLM
        assert (merged(input_ids=base_logits_probe).logits - adapter_logits).abs().max() <= tol  # W + BA vs Wx + BAx


@pytest.mark.slow
def test_lora_reverse_task_slow():
    result = _script("train_toy").run(task="reverse", steps=600)
    assert result["eval_loss_after"] < 0.3 * result["eval_loss_before"], result
    assert result["held_out_accuracy"] >= 0.8, result


def test_4bit_loading_needs_bitsandbytes_and_cuda(tmp_path):
    """The one bitsandbytes config (`llada_hf.loading.quantization_config`) refuses where it cannot work."""
    if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
        pytest.skip("bitsandbytes and CUDA are here; 4-bit loading is not tested in the CPU suite")
    tiny_model(0).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="--load_in_4bit needs (a CUDA GPU|bitsandbytes)"):
        load_model(str(tmp_path), load_in_4bit=True)


# ---------------------------------------------------------------------------------------------------------------------
# Autoregressive -> diffusion


def _llama(kv_heads: int, tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, rope_theta=1000.0, rms_norm_eps=1e-6, max_position_embeddings=64,
        tie_word_embeddings=tie, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize(("kv_heads", "tie"), [(4, False), (2, False), (1, True)])
def test_convert_llama_reproduces_causal_logits(kv_heads, tie):
    llama = _llama(kv_heads, tie)
    llada = convert_llama_to_llada(llama)
    cfg = llada.config
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.num_key_value_heads) == (1000.0, 1e-6, kv_heads)
    assert (cfg.vocab_size, cfg.mask_token_id, cfg.tie_word_embeddings) == (129, 128, tie)
    assert llada.generation_config.mask_token_id == 128
    mean_row = llama.model.embed_tokens.weight.mean(0)
    atol = fp32_tol(mean_row, llama.config.vocab_size)  # a mean over the vocabulary's rows
    assert torch.allclose(llada.model.embed_tokens.weight[128], mean_row, rtol=0, atol=atol)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    causal = annealed_attention_mask(10, 0.0)
    assert torch.equal(causal[0, 0] == 0, torch.ones(10, 10, dtype=torch.bool).tril())
    with torch.no_grad():
        expected = llama(input_ids=ids).logits
        got = llada(input_ids=ids, attention_mask=causal).logits
        bidirectional = llada(input_ids=ids).logits
    assert (got[..., :128] - expected).abs().max().item() <= fp32_tol(expected, forward_depth(llada.config, 10))
    assert (bidirectional[..., :128] - expected).abs().max().item() > 1e-3  # attention is no longer causal
    assert convert_llama_to_llada(llama, mask_token_id=5).config.vocab_size == 128  # a given id: no resize


def test_converted_llama_trains_with_diffusion_loss_and_annealing(tmp_path):
    llada = convert_llama_to_llada(_llama(2, False))
    assert torch.equal(annealed_attention_mask(6, 1.0), torch.zeros(1, 1, 6, 6))
    half = annealed_attention_mask(6, 0.5)[0, 0] == 0
    assert half[0].tolist() == [True, True, True, False, False, False]  # itself + a window of round(2.5) = 2
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 128, (16,), generator=generator).tolist()} for _ in range(8)]
    collator = DiffusionCollator(mask_token_id=128, pad_token_id=0, mode="pretrain")
    trainer = DiffusionTrainer(
        model=llada,
        args=_args(tmp_path, max_steps=40, per_device_train_batch_size=8, learning_rate=3e-3),
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=datasets.Dataset.from_list(rows),
        data_collator=collator,
        attention_anneal_steps=20,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < 0.9 * before


# ---------------------------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` caches under tmp_path, not in the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


def _cli(tmp_path, data, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "tiny", "--train_file", str(data), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--use_cpu",
        "--disable_tqdm", "true", "--report_to", "none", "--max_length", "64", *extra,
    ]  # fmt: skip


def _write_jsonl(path: Path, rows: list, blank_lines: bool = False) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text(
        "".join(f"{line}\n" + ("\n" if blank_lines and i % 3 == 1 else "") for i, line in enumerate(lines))
    )
    return path


@pytest.mark.parametrize("variant", ["sft", "sft-lora", "pretrain", "sft-text"])
def test_train_main_runs_evaluates_and_saves(tmp_path, variant, capsys, datasets_cache):
    rows = _toy_rows(24)
    if variant == "pretrain":
        rows = [{"input_ids": r["prompt_ids"] + r["answer_ids"] + [EOS]} for r in rows]
    elif variant == "sft-text":  # prompt/answer strings through the tiny tokenizer's chat template
        pytest.importorskip("llada_hf.tokenizer")
        rows = [{"prompt": f"Repeat {i}", "answer": str(i)} for i in range(24)]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "run"
    argv = [
        "--model_name_or_path", "tiny", "--train_file", str(data), "--eval_size", "8", "--output_dir", str(out),
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--eval_strategy",
        "steps", "--eval_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--use_cpu", "--disable_tqdm",
        "true", "--report_to", "none", "--max_length", "64" if variant == "sft-text" else "16",
        "--mode", "pretrain" if variant == "pretrain" else "sft",
    ]  # fmt: skip
    if variant == "sft-lora":
        argv += ["--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj,k_proj", "v_proj"]
    assert train_main(argv) == 0
    assert "eval_loss" in capsys.readouterr().out
    model = load_trained(out)
    assert type(model) is llada_hf.LLaDAModelLM and model.config.mask_token_id == MASK
    assert (out / "adapter" / "adapter_config.json").is_file() == (variant == "sft-lora")
    if variant == "sft-lora":
        config = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"] and config["r"] == 4
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    if variant == "sft-text":
        assert (out / "tokenizer_config.json").is_file()
    # save_state / save_metrics / the model card (objective, data, hyper-parameters, evaluation results)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    card = (out / "README.md").read_text()
    samples = json.loads((out / "train_results.json").read_text())["train_samples"]
    assert samples == 16 if variant != "pretrain" else f"packed into {samples} blocks of 16 tokens" in card
    assert "eval_loss" in json.loads((out / "eval_results.json").read_text())
    objective = "pre-training ELBO" if variant == "pretrain" else "Objective: SFT"
    assert objective in card and "masked-diffusion" in card and "learning_rate: 0.001" in card
    assert f"train: 16 rows from {data} (rows 8+)" in card and f"eval: 8 rows from {data} (first 8 rows)" in card
    meta = ModelCard.load(out / "README.md").data
    assert meta.library_name == "llada_hf" and meta.pipeline_tag == "text-generation" and meta.base_model is None
    assert "Validation Loss" in card and "pip install llada_hf" in card and "More information needed" not in card


@pytest.mark.parametrize(
    ("base", "expected"),
    [("GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-8B-Instruct"), ("gpt2", "gpt2"), ("local", None), ("tiny", None)],
)
def test_model_card_names_a_hub_base_only_and_says_how_to_load(tmp_path, base, expected):
    """Built from the Trainer's own `create_model_card` arguments: no broken hub link for a local base."""
    if base == "local":
        base = str(tmp_path / "base")
        os.makedirs(base)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, hub_model_id="me/run")
    collator = DiffusionCollator(mask_token_id=MASK, pad_token_id=EOS)
    trainer = DiffusionTrainer(model=tiny_model(0), args=args, data_collator=collator)
    trainer.create_model_card(finetuned_from=base, tags="mine", dataset="my-rows")
    text = (tmp_path / "out" / "README.md").read_text()
    meta = ModelCard.load(tmp_path / "out" / "README.md").data
    assert meta.base_model == expected and meta.library_name == "llada_hf"
    assert meta.pipeline_tag == "text-generation" and {"mine", "llada", "masked-diffusion"} <= set(meta.tags)
    assert ("huggingface.co/" + str(expected) in text) == (expected is not None) and str(tmp_path) not in text
    usage = text.split("## Usage", 1)[1]
    assert "pip install llada_hf" in usage and "import llada_hf" in usage and '"me/run"' in usage
    assert "--format remote-code" in usage and "trust_remote_code=True" in usage


def test_train_main_reads_trl_prompt_completion_rows_and_any_load_dataset_source(tmp_path, capsys, datasets_cache):
    rows = [{"prompt": f"Repeat {i}:", "completion": f" it is {i}"} for i in range(12)]
    data = _write_jsonl(tmp_path / "trl.jsonl", rows)
    assert train_main(_cli(tmp_path, data, "--logging_steps", "1")) == 0
    assert "'loss'" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 2
    # --dataset_name: a load_dataset builder with data files (csv here; parquet and hub ids go the same way)
    datasets.Dataset.from_list(rows).to_csv(tmp_path / "rows.csv", index=False)
    argv = _cli(tmp_path, data, "--dataset_name", "csv", "--data_files", str(tmp_path / "rows.csv"))
    argv.remove("--train_file")
    argv.remove(str(data))
    assert train_main(argv) == 0
    assert "csv[train]" in (tmp_path / "run" / "README.md").read_text()


@pytest.mark.parametrize("problem", ["missing-field", "malformed-json"])
def test_bad_rows_fail_before_the_first_step_naming_the_line(tmp_path, capsys, monkeypatch, problem, datasets_cache):
    rows = [{"prompt": f"Repeat {i}", "answer": str(i)} for i in range(24)]
    if problem == "missing-field":
        rows[5] = {"prompt": "Repeat 5"}  # line 8 of the file below (blank lines after lines 2, 5, ...)
        expected = "line 8: missing field 'completion' (or 'answer')"
    else:
        rows[16] = '{"prompt": "Repeat 16" "answer": "16"}'  # line 22
        expected = "line 22: invalid JSON"
    data = _write_jsonl(tmp_path / "bad.jsonl", rows, blank_lines=True)

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(DiffusionTrainer, "training_step", never)
    assert train_main(_cli(tmp_path, data)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("llada-hf train: error: ") and f"{data} {expected}" in error, error
    assert len(error.splitlines()) == 1  # one line: no traceback, no progress bars (--disable_tqdm)


def test_too_long_prompts_are_reported_and_an_all_too_long_dataset_is_refused(
    tmp_path, capsys, caplog, datasets_cache
):
    rows = [{"prompt": "x" * (60 if i % 4 == 0 else 4), "answer": "yy"} for i in range(16)]
    data = _write_jsonl(tmp_path / "long.jsonl", rows)
    assert train_main(_cli(tmp_path, data, "--max_length", "32")) == 0
    assert f"train: 16 rows from {data}; 4 dropped (prompt of max_length 32 tokens or more" in caplog.text
    assert f"{data} line 1 dropped" in caplog.text
    assert "4 dropped" in (tmp_path / "run" / "README.md").read_text()
    data = _write_jsonl(tmp_path / "all_long.jsonl", [{"prompt": "x" * 60, "answer": "y"}] * 8)
    assert train_main(_cli(tmp_path, data, "--max_length", "32")) == 2
    assert "nothing to train on: all 8 rows have a prompt of max_length 32 tokens or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "no rows (empty file)"),
        ("eval_size", "--eval_size 12 leaves nothing to train on: {data} has 12 rows"),
        ("missing", "{data}: no such file"),
    ],
)
def test_bad_settings_and_empty_data_give_one_clear_error(tmp_path, capsys, setup, message, datasets_cache):
    data = _write_jsonl(tmp_path / "rows.jsonl", [{"prompt": str(i), "answer": str(i)} for i in range(12)])
    extra = {"eval_size": ["--eval_size", "12"]}
    if setup == "empty":
        data.write_text("\n\n")
    elif setup == "missing":
        data = tmp_path / "nowhere.jsonl"
    assert train_main(_cli(tmp_path, data, *extra.get(setup, []))) == 2
    error = capsys.readouterr().err
    assert message.format(data=data) in error and len(error.strip().splitlines()) == 1, error


def test_push_to_hub_is_passed_to_the_trainer_and_pushes_with_the_card(tmp_path, monkeypatch, datasets_cache):
    """No network: the Trainer's hub calls are recorded instead."""
    calls = []
    monkeypatch.setattr(DiffusionTrainer, "init_hf_repo", lambda self, *a, **k: calls.append("init"))

    def push(self, *args, **kwargs):
        calls.append(("push", self.args.push_to_hub, self.args.hub_model_id))

    monkeypatch.setattr(DiffusionTrainer, "push_to_hub", push)
    data = _write_jsonl(tmp_path / "rows.jsonl", [{"prompt": str(i), "answer": str(i)} for i in range(8)])
    assert train_main(_cli(tmp_path, data, "--push_to_hub", "--hub_model_id", "someone/tiny-llada")) == 0
    assert calls == ["init", ("push", True, "someone/tiny-llada")]
    assert "Objective: SFT" in (tmp_path / "run" / "README.md").read_text()


def test_save_trained_merges_lora(tmp_path):
    base = tiny_model(0)
    peft_model = get_lora_model(base, r=4, init_lora_weights=False).eval()
    ids = torch.randint(0, 900, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    merged = save_trained(peft_model, tmp_path)
    with torch.no_grad():
        for model in (merged, load_trained(tmp_path).eval()):
            assert (model(input_ids=ids).logits - expected).abs().max() <= fp32_tol(
                expected, forward_depth(base.config, 6)
            )
