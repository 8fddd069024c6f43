"""`llada-hf` CLI: one flag style with help everywhere, loading flags, one-line errors, `llada-hf memory`."""

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_DIR, llada21_checkpoint

from llada_hf import cli, memory
from llada_hf.errors import UsageError
from llada_hf.hub import load_hub_config
from llada_hf.memory import estimate_memory, meta_model

PACKAGE = Path(cli.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_is_dash_case_with_help_and_fixed_values_have_choices():
    for name, sub in _subparsers(cli.build_parser()).items():
        if name in ("train", "eval"):  # HfArgumentParser / lm-eval parse their own flags
            continue
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, (name, action.dest)
            for flag in action.option_strings:
                assert "_" not in flag, (name, flag)
    demo = _subparsers(cli.build_parser())["chat"]
    by_dest = {a.dest: a for a in demo._actions}
    for dest in ("dtype", "attn_implementation", "remasking"):
        assert by_dest[dest].choices, dest
    assert {"device_map", "load_in_8bit", "load_in_4bit"} <= set(by_dest)


def test_no_import_cycle_between_cli_demo_and_loading():
    """`cli` runs the demo (one direction); `demo` and the shared `loading` module import neither `cli` nor each
    other's users."""

    def imports(name: str) -> set[str]:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert "cli" not in imports("demo")
    assert not {"cli", "demo"} & imports("loading")
    assert "loading" in imports("demo") and "loading" in imports("cli")


def test_missing_model_is_one_line_and_non_zero():
    result = subprocess.run(
        [sys.executable, "-m", "llada_hf.cli", "chat", "--model", "/nonexistent"],
        input="hi\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    # (lines from third-party imports, e.g. a torchao build warning in this venv, are not ours)
    lines = [line for line in result.stderr.splitlines() if line.startswith("llada-hf")]
    assert lines == [
        "llada-hf chat: error: no model at /nonexistent: not a folder (give a checkpoint folder or a hub id)"
    ]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_quantisation_on_cpu_is_a_clear_error(capsys):
    assert cli.main(["chat", "--model", str(GOLDEN_DIR), "--load-in-4bit"]) == 1
    assert "--load-in-4bit needs a CUDA GPU" in capsys.readouterr().err


def test_loading_flags_reach_from_pretrained(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", iter(["What is 12 + 7?\n"]))
    assert cli.main(["chat", "--attn-implementation", "eager", "--dtype", "float32", "--device-map", "cpu"]) == 0
    assert "LLaDA: 12 + 7 = 19." in capsys.readouterr().out


def test_progress_streamer_counts_steps_and_is_quiet_when_piped(capsys, monkeypatch):
    from llada_hf import progress
    from llada_hf.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(None)
    capsys.readouterr()
    monkeypatch.setattr(progress, "interactive", lambda: False)  # piped
    streamer = progress.StepProgress(8)
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8, steps=8, block_length=8, streamer=streamer)
    assert streamer.steps == 8 and "denoising" not in capsys.readouterr().err
    monkeypatch.setattr(progress, "interactive", lambda: True)  # a terminal
    shown = progress.StepProgress(4)
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, steps=4, block_length=4, streamer=shown)
    assert "denoising" in capsys.readouterr().err and shown.steps == 4


def test_scoring_progress_bar_is_opt_in(golden_model, capsys):
    from llada_hf.likelihood import batch_log_likelihood

    pairs = [([1, 2], [3, 4])] * 3
    quiet = batch_log_likelihood(golden_model, pairs, mc_num=4, batch_size=4, progress=False)
    assert "scoring" not in capsys.readouterr().err
    shown = batch_log_likelihood(golden_model, pairs, mc_num=4, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "scoring" in err and "3/3" in err
    assert len(quiet) == len(shown) == 3


# ---------------------------------------------------------------------------------------------------------------------
# llada-hf memory


@pytest.mark.parametrize(
    "model", ["llada_hf/tiny", str(FIXTURES / "lladamoe_tiny"), str(FIXTURES / "llada2_tiny"), "GSAI-ML/LLaDA-8B-Base"]
)
def test_memory_cli_prints_estimate_memory(model, capsys):
    assert cli.main(["memory", model, "--dtype", "float32", "--batch-size", "2", "--max-new-tokens", "48"]) == 0
    out = capsys.readouterr().out
    from llada_hf.memory import load_config

    estimate = estimate_memory(load_config(model), dtype=torch.float32, batch_size=2, seq_len=48)
    assert estimate.summary() in out
    assert f"parameters: {estimate.parameters:,} " in out
    assert estimate.per_device[0] == (
        estimate.weight_bytes + estimate.buffer_bytes + estimate.activation_bytes + estimate.step_bytes
    )  # one step's working set holds the logits


def test_memory_weights_come_from_the_model_for_every_family_member():
    for name in ("llada_hf/tiny", "inclusionAI/LLaDA2.0-mini"):
        config = load_hub_config(name)
        model = meta_model(config, torch.bfloat16)
        estimate = estimate_memory(config, dtype=torch.bfloat16, seq_len=64)
        assert estimate.parameters == sum(p.numel() for p in model.parameters())
        assert estimate.weight_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate.active_parameters is not None and estimate.active_parameters < estimate.parameters / 5
    assert estimate_memory(load_hub_config("llada_hf/tiny")).active_parameters is None


def test_memory_cli_plans_a_device_map(capsys):
    argv = ["memory", "GSAI-ML/LLaDA-8B-Instruct", "--device-map", "balanced", "--max-memory", "0=40GiB", "1=40GiB"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "device_map:" in out and "     1:" in out
    assert cli.main(["memory", "/nonexistent"]) == 1
    assert capsys.readouterr().err.strip() == "llada-hf memory: error: no model or config at /nonexistent"


# ---------------------------------------------------------------------------------------------------------------------
# Flag checks and exit codes


@pytest.mark.parametrize(
    ("flag", "field"),
    [("--steps", "steps"), ("--block-length", "block_length"), ("--max-new-tokens", "max_new_tokens"),
     ("--temperature", "temperature"), ("--cfg-scale", "cfg_scale"), ("--threshold", "threshold")],
)  # fmt: skip
def test_chat_flag_types_follow_the_generation_config_rules(flag, field):
    """Each value the flag's type accepts is one `LLaDAGenerationConfig.validate` accepts, and the reverse (a chat
    needs an answer: `max_new_tokens` 0, which generate() allows for infilling only, is refused by the flag)."""
    from llada_hf.generation import LLaDAGenerationConfig

    action = next(a for a in _subparsers(cli.build_parser())["chat"]._actions if flag in a.option_strings)
    for text in ("-1", "0", "1", "2", "16", "0.5", "2.5", "nan", "inf", "-inf", "1e-3"):
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError:
            value = None
        try:
            number = float(text) if "." in text or not text.lstrip("-").isdigit() else int(text)
            LLaDAGenerationConfig(**{field: number}).validate()
            library = not (field == "max_new_tokens" and number == 0)
        except ValueError:
            library = False
        assert (value is not None) == library, (flag, text)


def test_parser_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["chat", "--steps", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "llada-hf chat: error: argument --steps: must be a positive integer (got -1)\n"


@pytest.mark.parametrize(
    ("error", "code"), [(UsageError("--learning_rate must be finite"), 2), (RuntimeError("disk full"), 1)]
)
@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_errors_are_one_line_and_debug_reraises(command, error, code, monkeypatch, capsys):
    import llada_hf.lm_eval_backend as backend
    import llada_hf.training as training

    def fail(argv):
        raise error

    monkeypatch.setattr(training, "train_main", fail)
    monkeypatch.setattr(backend, "main", fail)
    assert cli.main([command, "--some_flag", "1"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"llada-hf {command}: error: ") and str(error) in err
    with pytest.raises(type(error)):
        cli.main(["--debug", command, "--some_flag", "1"])


def test_chat_block_length_is_checked_against_the_model_before_the_session(monkeypatch, capsys):
    """`--block-length 5` with the model's 16-token answers: exit 2 after loading, before the session prints."""
    monkeypatch.setattr("sys.stdin", iter(["What is 12 + 7?\n"]))
    assert cli.main(["chat", "--block-length", "5"]) == 2
    captured = capsys.readouterr()
    assert "Chat with LLaDA" not in captured.out
    assert captured.err.strip() == (
        "llada-hf chat: error: the model's max_new_tokens (16, from generation_config.json) must be divisible by "
        "--block-length (5)"
    )
    with pytest.raises(UsageError):
        cli.main(["--debug", "chat", "--block-length", "5"])


def test_memory_module_main_has_the_cli_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        memory.main(["--batch-size", "-3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "llada-hf memory: error: argument --batch-size: must be a positive integer (got -3)"
    )


def test_train_argparse_errors_are_one_line(capsys):
    """`HfArgumentParser`'s own usage errors (a bad `TrainingArguments` value) are one line under `llada-hf`."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--max_steps", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llada-hf train: error: argument --max_steps")


@pytest.mark.parametrize(
    "name, sampler", [("LLaDA2.1-tiny", "llada2.1"), ("my_llada2.1_sft", "llada2.1"), ("LLaDA2.0-tiny", "llada2.0")]
)
def test_chat_picks_the_llada21_sampler_by_model_name(tmp_path, monkeypatch, capsys, name, sampler):
    """LLaDA2.1 has LLaDA2.0's config.json: a model named LLaDA2.1 (any case) chats with token editing."""
    from llada_hf.generation.generation_llada2 import TokenEditing

    path = llada21_checkpoint(tmp_path / name)
    loaded, edits = [], []  # what chat loaded; TokenEditing calls
    real_load, real_edit = cli.load_model_and_tokenizer, TokenEditing.__call__
    monkeypatch.setattr(
        cli, "load_model_and_tokenizer", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[0]
    )
    monkeypatch.setattr(TokenEditing, "__call__", lambda self, *a: edits.append(1) or real_edit(self, *a))
    monkeypatch.setattr("sys.stdin", iter(["Hi\n"]))
    argv = ["chat", "--model", str(path), "--dtype", "float32", "--max-new-tokens", "16", "--block-length", "8"]
    assert cli.main(argv) == 0
    assert "LLaDA:" in capsys.readouterr().out
    assert loaded[0][0].generation_config.sampler == sampler
    assert bool(edits) == (sampler == "llada2.1")  # the editing part ran in the chat's generate()
