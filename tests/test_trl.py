"""TRL on the demo model: plain `SFTTrainer` refuses to train the next-token objective; `DiffusionSFTTrainer`
trains the masked-diffusion SFT objective on every TRL row format, tokenised as `generate()` sees it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from llada_hf.demo import arithmetic_rows, load_demo_model, split_pairs  # noqa: E402
from llada_hf.training import (  # noqa: E402
    DiffusionSFTConfig,
    DiffusionSFTTrainer,
    DiffusionTrainingArguments,
    encode_example,
)
from llada_hf.training.trainer import DIFFUSION_FIELDS  # noqa: E402

torch.set_num_threads(1)


def _messages(count: int = 8) -> list[dict]:
    return arithmetic_rows(split_pairs()[0][:count], phrasings=("Please add {a} and {b}.",))


def _formats() -> dict[str, list[dict]]:
    rows = _messages()
    return {
        "messages": rows,
        "prompt_completion": [
            {"prompt": row["messages"][0]["content"], "completion": row["messages"][1]["content"]} for row in rows
        ],
        "conversational_prompt_completion": [
            {"prompt": row["messages"][:1], "completion": row["messages"][1:]} for row in rows
        ],
    }


def _config(tmp_path, cls=DiffusionSFTConfig, **kwargs):
    values = dict(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, max_length=64, seed=0,
        gradient_checkpointing=False,
    )  # fmt: skip
    values.update(kwargs)
    return cls(**values)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_plain_sft_trainer_refuses_the_next_token_objective(tmp_path, peft):
    model, tokenizer = load_demo_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = trl.SFTTrainer(
        model=model, args=_config(tmp_path, cls=trl.SFTConfig), train_dataset=datasets.Dataset.from_list(_messages()),
        processing_class=tokenizer, peft_config=peft_config,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"next-token \(causal\) SFT.*llada_hf\.training\.DiffusionSFTTrainer"):
        trainer.train()
    assert trainer.state.global_step == 0
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, p in base.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), name


def test_config_reuses_the_diffusion_fields(tmp_path):
    own = {f.name: f for f in dataclasses.fields(DiffusionSFTConfig)}
    theirs = {f.name: f for f in dataclasses.fields(DiffusionTrainingArguments)}
    for name in DIFFUSION_FIELDS:
        assert own[name] is theirs[name]  # inherited, not copied
    assert issubclass(DiffusionSFTConfig, trl.SFTConfig)
    with pytest.raises(ValueError, match="--eps"):
        _config(tmp_path, eps=0.0)


@pytest.mark.parametrize("name", list(_formats()))
def test_prompt_is_tokenised_as_generate_sees_it(name):
    _, tokenizer = load_demo_model()
    row, messages = _formats()[name][0], _messages()[0]["messages"]
    ids, prompt_length = encode_example(row, tokenizer)
    if name == "prompt_completion":  # TRL's standard format: plain text, no template (as TRL and pipeline("text"))
        prompt = tokenizer(messages[0]["content"], add_special_tokens=False)["input_ids"]
    else:
        prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, return_dict=False)
        prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
    assert ids[:prompt_length] == prompt
    answer = tokenizer(messages[1]["content"], add_special_tokens=False)["input_ids"]
    end = [tokenizer.convert_tokens_to_ids("<|eot_id|>")] if name != "prompt_completion" else []
    assert ids[prompt_length:] == answer + end + [tokenizer.eos_token_id]


@pytest.mark.parametrize("name", list(_formats()))
def test_diffusion_sft_trainer_trains_every_trl_format(tmp_path, name):
    model, tokenizer = load_demo_model()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = _formats()[name]
    trainer = DiffusionSFTTrainer(
        model=model, args=_config(tmp_path), train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )
    assert isinstance(trainer, trl.SFTTrainer)
    expected = [encode_example(row, tokenizer) for row in rows]
    assert [(list(r["input_ids"]), r["prompt_length"]) for r in trainer.train_dataset] == [
        (list(ids), length) for ids, length in expected
    ]  # the `llada-hf train` data path
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_plain_sft_config_is_accepted_and_packing_refused(tmp_path):
    model, tokenizer = load_demo_model()
    rows = _messages(4)
    trainer = DiffusionSFTTrainer(
        model=model, args=_config(tmp_path, cls=trl.SFTConfig), train_dataset=rows, processing_class=tokenizer
    )
    assert isinstance(trainer.args, DiffusionSFTConfig) and trainer.args.eps == DiffusionSFTConfig.eps
    with pytest.raises(ValueError, match="packing"):
        DiffusionSFTTrainer(
            model=model, args=_config(tmp_path, packing=True), train_dataset=rows, processing_class=tokenizer
        )
