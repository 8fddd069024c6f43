"""The embedded demo model (offline, sensible answers, `llada-hf demo`) and CI-sized runs of the experiments."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from llada_hf.demo import (
    DEMO_DIR,
    PHRASINGS,
    answer_questions,
    arithmetic_answer,
    load_demo_model,
    run_demo,
    split_pairs,
)

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def test_demo_model_is_small_and_shipped(demo):
    model, tokenizer = demo
    assert (DEMO_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert type(model).__name__ == "LLaDAModelLM" and not model.training
    assert tokenizer.mask_token_id == model.config.mask_token_id == model.generation_config.mask_token_id
    assert model.generation_config.eot_token_id == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>")


def test_demo_model_adds_held_out_numbers(demo):
    model, tokenizer = demo
    _, held_out = split_pairs()
    pairs = held_out[:8]
    questions = [PHRASINGS[i % len(PHRASINGS)].format(a=a, b=b) for i, (a, b) in enumerate(pairs)]
    answers = answer_questions(model, tokenizer, questions)
    correct = [answer == arithmetic_answer(a, b) for answer, (a, b) in zip(answers, pairs)]
    assert sum(correct) >= 6, list(zip(questions, answers))
    # Even when a sum is wrong, the answer keeps the "a + b = c." shape.
    assert all(answer.startswith(f"{a} + {b} = ") and answer.endswith(".") for answer, (a, b) in zip(answers, pairs))


def test_run_demo_offline_through_the_pipeline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = argparse.Namespace(model=None, prompt=["What is 21 + 34?"], no_visualize=False, dtype="auto")
    assert run_demo(args) == 0
    out = capsys.readouterr().out
    assert "User: What is 21 + 34?" in out
    assert "LLaDA: 21 + 34 = 55." in out
    assert "step 1/16" in out and "step 16/16" in out and "░" in out  # the canvas drawn step by step
    assert "GSAI-ML/LLaDA-8B-Instruct" in out


def test_demo_cli(capsys):
    from llada_hf import cli

    assert cli.main(["demo", "--no-visualize", "--prompt", "Add 3 and 4."]) == 0
    out = capsys.readouterr().out
    assert "LLaDA: 3 + 4 = 7." in out and "step 1/" not in out


# ---------------------------------------------------------------------------------------------------------------------
# Experiments, CI-sized (`--quick`): the scripts run end to end and write well-formed results


def _check_outputs(out_dir: Path, name: str) -> dict:
    for suffix in ("md", "json", "png"):
        assert (out_dir / f"{name}.{suffix}").stat().st_size > 0
    markdown = (out_dir / f"{name}.md").read_text()
    assert markdown.startswith("# ") and ("| masked diffusion |" in markdown or "| rule |" in markdown)
    assert (out_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out_dir / f"{name}.json").read_text())


def test_reversal_quick(tmp_path):
    import reversal

    assert reversal.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    data = _check_outputs(tmp_path, "reversal")
    for kind in ("mdm", "ar"):
        for metric in ("forward_held_out", "reverse_held_out", "forward_trained", "reverse_trained_control"):
            assert 0 <= data["summary"][kind][metric]["mean"] <= 1
    assert "reverse_infill_held_out" in data["summary"]["mdm"] and set(data["best_lr"]) == {"mdm", "ar"}


def test_reversal_data_design():
    import reversal

    vocab = reversal.Vocab(10)
    test_group, both_group = reversal.make_entities(4, 6, seed=0)
    sentences = reversal.training_sentences(vocab, test_group, both_group)
    assert len(sentences) == 4 * 3 + 6 * 8
    text = {tuple(s) for s in sentences}
    for name, description in test_group:  # test entities: never description-first, never the held-out relation
        for relation in range(len(reversal.REVERSE_RELATIONS)):
            prompt, answer = reversal.reverse_words(name, description, relation)
            assert not any(tuple(vocab.encode(prompt + answer)) == s[1:-1] for s in text)
        prompt, answer = reversal.forward_words(name, description, reversal.HELD_OUT_FORWARD)
        assert not any(tuple(vocab.encode(prompt + answer)) == s[1:-1] for s in text)


def test_causal_twin_sees_only_the_past():
    from common import Backbone, ar_logits, build_model

    model = build_model(Backbone(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                        vocab_size=20, max_length=16, seed=0)  # fmt: skip
    x = torch.randint(3, 20, (2, 10))
    y = x.clone()
    y[:, 6:] = 5
    assert torch.equal(ar_logits(model, x)[:, :6], ar_logits(model, y)[:, :6])
    assert not torch.equal(model(x).logits[:, :6], model(y).logits[:, :6])  # the MDM is bidirectional
