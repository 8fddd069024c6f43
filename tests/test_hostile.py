"""Hostile inputs, as a new user would try them: each case asserts the error type and that the message names the
argument (or, for the command line, one line on stderr, the exit code and an untouched output folder).

Sections: library entry points (likelihood, config loading, memory, generation), data and training, lm-eval, export,
command line. Each section keeps its own parametrised cases.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`llada-hf ARGS` in a subprocess (offline); returns the completed process with text stdout/stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "llada_hf.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *names: str) -> str:
    """The run failed with `code`, printed exactly one line on stderr (no traceback) naming each of `names`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def folder_state(path: Path) -> dict[str, float]:
    """Every file under `path` with its modification time (an empty dict for a missing folder)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


# =====================================================================================================================
# Library entry points: likelihood, config and hub-config loading, memory, generation (logits processors, masks).
# =====================================================================================================================


# =====================================================================================================================
# Data rows and training (llada_hf.training): row validation, `llada-hf train` flags.
# =====================================================================================================================


def _chat(answer: object = "ok", role: str = "user") -> dict:
    return {"messages": [{"role": role, "content": "hi"}, {"role": "assistant", "content": answer}]}


_GOOD_CHAT = [_chat(f"ok {i}") for i in range(6)]

# (rows, field named, place named, place that must NOT be named); the tiny tokenizer, a 1024-token model vocabulary.
ROW_CASES = {
    "id_at_vocab": ([{"input_ids": [5, 6, 1024]}], "input_ids", "row 0", None),
    "id_far_beyond_vocab": ([{"input_ids": [5, 6, 7]}, {"input_ids": [5, 5000]}], "input_ids", "row 1", "row 0"),
    "answer_id_beyond_vocab": ([{"prompt_ids": [5], "answer_ids": [6, 99999]}], "answer_ids", "row 0", None),
    "bool_id": ([{"input_ids": [5, True]}], "input_ids", "row 0", None),
    "empty_role": ([_chat(role="")], "role", "row 0", None),
    "unknown_role": ([_chat(role="wizard")], "wizard", "row 0", None),
    "int_content": ([_chat(5)], "content", "row 0", None),
    "mixed_content_column": ([*_GOOD_CHAT[:4], _chat(5), _GOOD_CHAT[5]], "content", "row 4", "row 0"),
    "int_completion": ([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": 7}], "completion", "row 1",
                       "row 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", ROW_CASES)
def test_bad_training_rows_are_refused_before_training(case):
    from llada_hf.tokenizer import build_tiny_tokenizer
    from llada_hf.training import DataError, prepare_dataset

    rows, field, place, not_place = ROW_CASES[case]
    with pytest.raises(DataError) as caught:
        prepare_dataset(rows, build_tiny_tokenizer(), vocab_size=1024)
    message = str(caught.value)
    assert field in message and place in message, message
    assert not_place is None or f"{not_place}:" not in message, message
    if case == "unknown_role":
        assert "system, user, assistant" in message  # the accepted roles


def test_a_mixed_type_jsonl_names_its_real_line(tmp_path):
    """pyarrow sees the whole column; the error must name line 5 (the int), not the first lines."""
    import json

    from llada_hf.tokenizer import build_tiny_tokenizer
    from llada_hf.training import DataError, load_rows, prepare_dataset

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*_GOOD_CHAT[:4], _chat(5), _GOOD_CHAT[5]]))
    with pytest.raises(DataError) as caught:
        rows, locate, label = load_rows(str(path), cache_dir=str(tmp_path / "cache"))
        prepare_dataset(rows, build_tiny_tokenizer(), locate=locate, source=label)
    message = str(caught.value)
    assert f"{path} line 5" in message and "content" in message and "line 1:" not in message, message


def test_diffusion_trainer_checks_ids_against_the_model_vocabulary(tmp_path):
    from conftest import tiny_model
    from transformers import TrainingArguments

    from llada_hf.training import DataError, DiffusionCollator, DiffusionTrainer

    model = tiny_model(0)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    with pytest.raises(DataError, match=f"input_ids.*ids must be in \\[0, {model.config.vocab_size}\\)"):
        DiffusionTrainer(
            model=model, args=args, train_dataset=[{"input_ids": [1, 2, model.config.vocab_size]}],
            data_collator=DiffusionCollator(mask_token_id=model.config.mask_token_id, pad_token_id=0),
        )  # fmt: skip
    assert folder_state(tmp_path / "out") == {}


# `llada-hf train` flags: refused at parse time (before the model loads), `UsageError` naming the flag, no output.
TRAIN_FLAG_CASES = {
    "learning_rate_nan": (["--learning_rate", "nan"], "--learning_rate"),
    "learning_rate_negative": (["--learning_rate", "-1"], "--learning_rate"),
    "lora_r_zero": (["--use_peft", "--lora_r", "0"], "--lora_r"),
    "lora_dropout_one": (["--use_peft", "--lora_dropout", "1"], "--lora_dropout"),
    "lora_target_head": (["--use_peft", "--lora_target_modules", "lm_head"], "--lora_target_modules"),
    "lora_target_embedding": (["--use_peft", "--lora_target_modules", "q_proj,embed_tokens"], "embed_tokens"),
    "resume_missing": (["--resume_from_checkpoint", "/missing/checkpoint-5"], "--resume_from_checkpoint"),
    "eps_zero": (["--eps", "0"], "--eps"),
    "random_length_prob": (["--random_length_prob", "2"], "--random_length_prob"),
    "reweight_gamma_nan": (["--reweight_gamma", "nan"], "--reweight_gamma"),
    "anneal_negative": (["--attention_anneal_steps", "-3"], "--attention_anneal_steps"),
    "max_length_zero": (["--max_length", "0"], "--max_length"),
}


@pytest.mark.parametrize("case", TRAIN_FLAG_CASES)
def test_train_flags_are_checked_before_the_model_loads(case, tmp_path, monkeypatch):
    import llada_hf.training.cli as train_cli
    from llada_hf.errors import UsageError

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(train_cli, "load_model", never)
    monkeypatch.setattr(train_cli, "load_config", never)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"input_ids": [5, 6, 7]}\n')
    out = tmp_path / "run"
    flags, name = TRAIN_FLAG_CASES[case]
    argv = ["--model_name_or_path", "tiny", "--train_file", str(data), "--output_dir", str(out), "--use_cpu", *flags]
    with pytest.raises(UsageError) as caught:
        train_cli.train_main(argv)
    message = str(caught.value)
    assert name in message and len(message.splitlines()) == 1, message
    assert folder_state(out) == {} and not out.exists()


def test_train_row_beyond_the_vocabulary_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import llada_hf.training.cli as train_cli

    monkeypatch.setattr(train_cli, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "cache")
    data = tmp_path / "rows.jsonl"
    data.write_text('{"input_ids": [5, 6, 7]}\n{"input_ids": [5, 4096]}\n')
    out = tmp_path / "run"
    argv = ["--model_name_or_path", "tiny", "--train_file", str(data), "--output_dir", str(out), "--use_cpu"]
    assert train_cli.train_main([*argv, "--disable_tqdm", "true"]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{data} line 2" in error and "input_ids" in error and len(error.splitlines()) == 1, error
    assert not out.exists()


# =====================================================================================================================
# lm-eval backend settings.
# =====================================================================================================================

NO_MODEL = "/nonexistent/llada-model"  # a check that ran after HFLM's loading would fail with OSError instead
LM_EVAL_SETTINGS = [
    ({"mc_num": 0}, ["mc_num"]),  # was ZeroDivisionError (gcd(0, 32)) after loading the model
    ({"mc_num": -3}, ["mc_num"]),
    ({"mc_num": 2.5}, ["mc_num"]),
    ({"mc_batch_size": 0}, ["mc_batch_size"]),
    ({"mc_num": 10, "mc_batch_size": 4}, ["mc_num", "mc_batch_size"]),
    ({"cfg": -1}, ["cfg"]),
    ({"cfg": float("nan")}, ["cfg"]),
    ({"cfg_scale": -0.5}, ["cfg_scale"]),
    ({"temperature": -1}, ["temperature"]),  # was greedy, silently
    ({"temperature": float("inf")}, ["temperature"]),
    ({"steps": 0}, ["steps"]),
    ({"block_length": -8}, ["block_length"]),
    ({"gen_length": 0}, ["gen_length"]),
    ({"max_new_tokens": "many"}, ["max_new_tokens"]),
    ({"batch_size": 0}, ["batch_size"]),
    ({"max_batch_size": 0}, ["max_batch_size"]),
    ({"seed": -1}, ["seed"]),
    ({"seed": True}, ["seed"]),
    ({"method": "nope"}, ["method"]),
    ({"preset": "nope"}, ["preset"]),
]


@pytest.mark.parametrize(("settings", "names"), LM_EVAL_SETTINGS, ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_lm_eval_settings_are_checked_before_loading(settings, names):
    pytest.importorskip("lm_eval")
    from llada_hf.errors import UsageError
    from llada_hf.lm_eval_backend import LLaDAEvalHarness

    with pytest.raises(UsageError) as error:
        LLaDAEvalHarness(pretrained=NO_MODEL, device="cpu", **settings)
    for name in names:
        assert name in str(error.value)


LM_EVAL_CLI = [
    (["--model_args", f"pretrained={NO_MODEL}"], [NO_MODEL]),
    (["--model_args", f"pretrained={NO_MODEL}/", "--batch_size", "2"], [NO_MODEL]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base,mc_num=0"], ["mc_num"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base,temperature=-1"], ["temperature"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base", "--batch_size", "0"], ["batch_size"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base", "--device", "cuda"], ["--device", "CUDA"]),
    (["--model_args", "pretrained=GSAI-ML/LLaDA-8B-Base,device=cuda:0"], ["device", "CUDA"]),
]


@pytest.mark.parametrize(("argv", "names"), LM_EVAL_CLI, ids=lambda v: " ".join(v) if v and v[0] == "--" else "")
def test_lm_eval_main_checks_before_lm_eval_works(argv, names, monkeypatch):
    """`llada-hf eval` (lm_eval_backend.main): a UsageError naming the argument before lm-eval indexes a task or
    loads a model (its `execute` must not be reached)."""
    pytest.importorskip("lm_eval")
    import torch
    from lm_eval._cli import HarnessCLI

    from llada_hf.errors import UsageError
    from llada_hf.lm_eval_backend import main

    if "CUDA" in names and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")

    def execute(self, args):
        raise AssertionError("lm-eval ran before the arguments were checked")

    monkeypatch.setattr(HarnessCLI, "execute", execute)
    with pytest.raises(UsageError) as error:
        main(["--tasks", "arc_easy", *argv])
    for name in names:
        assert name in str(error.value)


def test_lm_eval_sampler_settings_reach_generate_as_given(tmp_path):
    """temperature 0 stays greedy under a checkpoint whose generation_config samples (it was dropped, so the
    checkpoint's sampling decided); a positive temperature arrives unchanged."""
    pytest.importorskip("lm_eval")
    import shutil

    from lm_eval.api.instance import Instance
    from transformers import GenerationConfig

    from llada_hf.lm_eval_backend import LLaDAEvalHarness
    from llada_hf.loading import DEMO_DIR

    folder = tmp_path / "sampling_demo"
    shutil.copytree(DEMO_DIR, folder)
    config = GenerationConfig.from_pretrained(folder)
    config.update(do_sample=True, temperature=0.9)
    config.save_pretrained(folder)
    request = [Instance("generate_until", {}, ("What is 1 + 2?", {"until": []}), 0, ("task", 0, 1))]
    for temperature, expected in ((0, {"do_sample": False}), (0.7, {"do_sample": True, "temperature": 0.7})):
        lm = LLaDAEvalHarness(pretrained=str(folder), dtype="float32", device="cpu", temperature=temperature)
        seen, generate = [], lm.model.generate

        def spy(input_ids, seen=seen, generate=generate, **kwargs):
            seen.append({key: kwargs[key] for key in ("do_sample", "temperature") if key in kwargs})
            return generate(input_ids, **kwargs)

        lm.model.generate = spy
        lm.generate_until(request)
        assert seen == [expected]


# =====================================================================================================================
# Export.
# =====================================================================================================================


# =====================================================================================================================
# Command line: every subcommand checks its flags before loading a model; one line, exit 2 (usage) or 1 (runtime).
# =====================================================================================================================
