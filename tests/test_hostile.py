"""Hostile inputs, as a new user would try them: each case asserts the error type and that the message names the
argument (or, for the command line, one line on stderr, the exit code and an untouched output folder).

Sections: library entry points (likelihood, config loading, memory, generation), data and training, lm-eval, export,
command line. Each section keeps its own parametrised cases.
"""

import atexit
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


class _CliServer:
    """One `tests/cli_fork_server.py` process for the module: each `run_cli` call is a fork of it (see its
    docstring: a real process with its own exit code and stderr, without paying the torch import per case)."""

    process: subprocess.Popen | None = None

    @classmethod
    def run(cls, argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        if cls.process is None or cls.process.poll() is not None:
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
            cls.process = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "cli_fork_server.py")], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO,
            )  # fmt: skip
            atexit.register(cls.stop)
        cls.process.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n")
        cls.process.stdin.flush()
        ready, _, _ = select.select([cls.process.stdout], [], [], timeout)
        if not ready:
            cls.stop()
            raise TimeoutError(f"llada-hf {' '.join(argv)} ran past {timeout} s")
        reply = json.loads(cls.process.stdout.readline())
        return subprocess.CompletedProcess(["llada-hf", *argv], reply["returncode"], reply["stdout"], reply["stderr"])

    @classmethod
    def stop(cls) -> None:
        if cls.process is not None and cls.process.poll() is None:
            cls.process.kill()
            cls.process.wait()
        cls.process = None


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`llada-hf ARGS` in its own process (offline, empty stdin); returns it completed, with text stdout/stderr."""
    return _CliServer.run(list(args), cwd or REPO, timeout)


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


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def tiny_lm():
    """The `llada_hf/tiny` model (vocab 1024, mask 1000), random weights, eval mode."""
    import torch

    import llada_hf
    from llada_hf.hub import load_hub_config

    torch.manual_seed(0)
    return llada_hf.LLaDAModelLM(load_hub_config("llada_hf/tiny")).eval()


def _ll(**kwargs):
    """`log_likelihood` on the tiny model with valid defaults, `kwargs` replacing them."""

    def call(model):
        from llada_hf.likelihood import log_likelihood

        args = {"prompt_ids": [1, 2, 3], "answer_ids": [5, 6], "mc_num": 4, "batch_size": 4, **kwargs}
        return log_likelihood(model, **args)

    return call


def _bll(pairs=(([1, 2, 3], [5, 6]),), **kwargs):
    """`batch_log_likelihood` on the tiny model; `pairs` is passed as given (a tuple becomes a list)."""

    def call(model):
        import torch

        from llada_hf.likelihood import batch_log_likelihood

        given = torch.tensor([[1, 2], [5, 6]]) if pairs == "tensor" else list(pairs)
        return batch_log_likelihood(model, given, **{"mc_num": 4, "batch_size": 4, **kwargs})

    return call


def _float_tensor_prompt(model):
    import torch

    from llada_hf.likelihood import log_likelihood

    return log_likelihood(model, torch.tensor([1.0, 2.0]), [5], mc_num=4, batch_size=4)


# case -> (call on the tiny model, error type, words its message must contain)
LIKELIHOOD_CASES = {
    "answer id >= vocab": (_ll(answer_ids=[5000]), ValueError, ("answer_ids", "[0, 1024)", "5000")),
    "prompt id < 0": (_ll(prompt_ids=[-1, 2]), ValueError, ("prompt_ids", "[0, 1024)")),
    "float answer ids": (_ll(answer_ids=[5.7]), TypeError, ("answer_ids", "integer")),
    "float tensor prompt": (_float_tensor_prompt, TypeError, ("prompt_ids", "integer")),
    "cfg_scale nan": (_ll(cfg_scale=float("nan")), ValueError, ("cfg_scale", "finite", ">= 0")),
    "cfg_scale inf": (_ll(cfg_scale=float("inf")), ValueError, ("cfg_scale", "finite", ">= 0")),
    "cfg_scale negative": (_ll(cfg_scale=-1.0), ValueError, ("cfg_scale", ">= 0")),
    "cfg_scale string": (_ll(cfg_scale="1"), TypeError, ("cfg_scale", "number")),
    "mc_num 0": (_ll(mc_num=0), ValueError, ("mc_num", "positive integer")),
    "mc_num float": (_ll(mc_num=4.0), ValueError, ("mc_num", "positive integer")),
    "batch_size -1": (_ll(batch_size=-1), ValueError, ("batch_size", "positive integer")),
    "stratified mc_num 0": (_ll(mc_num=0, method="stratified"), ValueError, ("mc_num", "positive integer")),
    "unknown method": (_ll(method="exactly"), ValueError, ("method", "stratified", "exact")),
    "pair of 3": (_bll(pairs=(([1, 2], [5], [6]),)), ValueError, ("pairs[0]", "(prompt_ids, answer_ids)", "3 items")),
    "pair not a pair": (_bll(pairs=(5,)), ValueError, ("pairs[0]", "(prompt_ids, answer_ids)")),
    "pairs a tensor": (_bll(pairs="tensor"), TypeError, ("pairs", "(prompt_ids, answer_ids)")),
    "pair 1 id >= vocab": (_bll(pairs=(([1], [5]), ([1], [1024]))), ValueError, ("answer_ids (pair 1)", "[0, 1024)")),
    "rows_per_forward 0": (_bll(rows_per_forward=0), ValueError, ("rows_per_forward", "positive integer")),
    "max_exact_len 0": (_bll(method="exact", max_exact_len=0), ValueError, ("max_exact_len", "positive integer")),
}


@pytest.mark.parametrize("case", sorted(LIKELIHOOD_CASES))
def test_likelihood_arguments_are_checked(tiny_lm, case):
    call, error, words = LIKELIHOOD_CASES[case]
    with pytest.raises(error) as caught:
        call(tiny_lm)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_likelihood_checks_every_pair_before_any_forward(tiny_lm):
    """A bad pair far down the list fails before the first forward (no work is wasted on the good ones)."""
    calls = []
    handle = tiny_lm.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="pair 300"):
            _bll(pairs=[([1], [5])] * 300 + [([1], [2000])])(tiny_lm)
    finally:
        handle.remove()
    assert not calls


def _edited_config(fixture: str, edit) -> dict:
    import json

    config = json.loads((FIXTURES / fixture / "config.json").read_text())
    edit(config)
    return config


def _drop(*keys):
    return lambda config: [config.pop(key) for key in keys]


def _set(**values):
    return lambda config: config.update(values)


# case -> (fixture whose config.json is edited, edit, error type, words the message must contain)
CONFIG_CASES = {
    "official without d_model": ("golden_tiny", _drop("d_model"), ValueError, ("d_model", "missing")),
    "official without vocab_size": ("golden_tiny", _drop("vocab_size"), ValueError, ("vocab_size", "missing")),
    "official without n_layers": ("golden_tiny", _drop("n_layers"), ValueError, ("n_layers", "missing")),
    "official n_heads string": ("golden_tiny", _set(n_heads="4"), TypeError, ("n_heads", "integer", "'4'")),
    "official d_model float": ("golden_tiny", _set(d_model=64.0), TypeError, ("d_model", "integer")),
    "official n_layers 0": ("golden_tiny", _set(n_layers=0), ValueError, ("n_layers", ">= 1")),
    "llada2 without hidden_size": ("llada2_tiny", _drop("hidden_size"), ValueError, ("hidden_size", "missing")),
    "llada2 num_experts string": ("llada2_tiny", _set(num_experts="8"), TypeError, ("num_experts", "integer")),
    "llada-moe without num_experts": ("lladamoe_tiny", _drop("num_experts"), ValueError, ("num_experts", "missing")),
    "llada-moe hidden_size string": ("lladamoe_tiny", _set(hidden_size="64"), TypeError, ("hidden_size", "integer")),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_json_keys_are_checked(tmp_path, case):
    """A checkpoint config.json with a missing or mistyped shape key is refused naming the key (through the Auto
    classes, as a user loads it), not reported as a size mismatch of every tensor or an operator error."""
    import json

    from transformers import AutoModel

    fixture, edit, error, words = CONFIG_CASES[case]
    (tmp_path / "config.json").write_text(json.dumps(_edited_config(fixture, edit)))
    with pytest.raises(error) as caught:
        AutoModel.from_pretrained(tmp_path)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [({"hidden_sizee": 8}, ("hidden_sizee", "hidden_size")), ({"n_head": 2}, ("n_head", "n_heads"))],
    ids=["hidden_sizee", "n_head"],
)
def test_hub_config_override_keys_are_checked(overrides, words):
    from llada_hf.hub import load_hub_config

    with pytest.raises(ValueError) as caught:
        load_hub_config("llada_hf/tiny", **overrides)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def _processor(kind: str):
    import torch
    from transformers import LogitsProcessor

    class DropsAColumn(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores[:, :-1]

    class AllNaN(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return torch.full_like(scores, float("nan"))

    class Transposed(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.t()

    return {"short": DropsAColumn, "nan": AllNaN, "transposed": Transposed}[kind]()


def _generate_kwargs(kind: str) -> dict:
    import torch

    if kind.startswith("mask"):
        return {"attention_mask": torch.tensor([[1, 2, 1]] if kind == "mask int" else [[1.0, 2.0, 1.0]])}
    return {"logits_processor": [_processor(kind)]}


# case -> (what `_generate_kwargs` builds, error type, words the message must contain)
GENERATE_CASES = {
    "processor drops a column": ("short", ValueError, ("logits_processor", "DropsAColumn", "shape")),
    "processor transposes": ("transposed", ValueError, ("logits_processor", "Transposed", "shape")),
    "processor returns NaN": ("nan", ValueError, ("logits_processor", "AllNaN", "NaN")),
    "int attention_mask 2": ("mask int", ValueError, ("attention_mask", "0/1", "got 2")),
    "float attention_mask 2.0": ("mask float", ValueError, ("attention_mask", "0/1", "got 2.0")),
}


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
def test_generate_inputs_and_processors_are_checked(golden_model, case):
    import torch

    kind, error, words = GENERATE_CASES[case]
    with pytest.raises(error) as caught:
        golden_model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, steps=4, **_generate_kwargs(kind))
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


@pytest.mark.parametrize("content", ["truncated", "not json", "binary"])
def test_unreadable_generation_config_is_an_error(tmp_path, content):
    """A generation_config.json that cannot be read names the file (it was ignored: default sampler settings)."""
    import shutil

    from transformers import AutoModel

    for path in (FIXTURES / "golden_tiny").iterdir():
        shutil.copy(path, tmp_path)
    text = {"truncated": '{"steps": 8, "block_', "not json": "steps = 8", "binary": None}[content]
    target = tmp_path / "generation_config.json"
    target.write_text(text) if text is not None else target.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="generation_config.json"):
        AutoModel.from_pretrained(tmp_path)


def test_explicit_steps_on_infill_are_still_checked():
    """Only steps the user did not pass are scaled to the canvas: an explicit invalid value is an error."""
    import torch

    from llada_hf.demo import load_demo_model

    model, tokenizer = load_demo_model()
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, model.config.mask_token_id, 7]])
    with pytest.raises(ValueError, match=r"steps \(4\) > masks to fill \(1\)"):
        model.generate(ids, infill=True, steps=4)


@pytest.mark.parametrize("removed", ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"])
def test_checkpoint_missing_a_weight_is_an_error(tmp_path, removed):
    """A checkpoint without one of the model's tensors is refused naming it (it was randomly initialised with only a
    logged report); `allow_missing_weights=True` opts out."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    shutil.copy(FIXTURES / "golden_tiny" / "config.json", tmp_path)
    tensors = load_file(FIXTURES / "golden_tiny" / "model.safetensors")
    official = {  # native name -> the official name stored in the fixture
        "model.layers.0.self_attn.q_proj.weight": "model.transformer.blocks.0.q_proj.weight",
        "model.norm.weight": "model.transformer.ln_f.weight",
        "lm_head.weight": "model.transformer.ff_out.weight",
    }
    del tensors[official[removed]]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as caught:
        AutoModel.from_pretrained(tmp_path)
    assert removed in str(caught.value) and "allow_missing_weights" in str(caught.value)
    model, info = AutoModel.from_pretrained(tmp_path, allow_missing_weights=True, output_loading_info=True)
    assert set(info["missing_keys"]) == {removed}


@pytest.mark.parametrize("role", ["", None, "usr", 5])
def test_chat_roles_are_checked(role):
    """An empty or unknown role rendered a headerless (or unknown) turn; both the template and the helper refuse it
    naming the accepted roles."""
    from jinja2.exceptions import TemplateError

    from llada_hf.tokenizer import CHAT_ROLES, build_tiny_tokenizer, check_chat_messages

    messages = [{"role": "user", "content": "hi"}, {"role": role, "content": "hello"}]
    with pytest.raises(TemplateError) as caught:
        build_tiny_tokenizer().apply_chat_template(messages, tokenize=False)
    assert "role" in str(caught.value) and all(name in str(caught.value) for name in CHAT_ROLES)
    with pytest.raises(ValueError) as caught:
        check_chat_messages(messages)
    assert "messages[1]" in str(caught.value) and all(name in str(caught.value) for name in CHAT_ROLES)


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
    "lora_flag_without_peft": (["--lora_target_modules", "lm_head"], "--use_peft"),
    "lora_rank_without_peft": (["--lora_r=4"], "--lora_r"),
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

_IMPORT_NOISE = re.compile(r"^(Failed to load \S*torchao|[WI]\d{4} [\d:. ]+\d+ \S*site-packages/)")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`run_cli`, minus the log lines a broken torchao build prints while `import llada_hf` imports transformers
    (before any llada_hf code runs; not this package's output)."""
    result = run_cli(*args, cwd=cwd)
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if not _IMPORT_NOISE.match(line))
    return result


_NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only message")

# (argv, exit code, what the one line must name). Each fails before a model loads, except `--block-length 5` alone
# (checked against the embedded demo model's generation_config.json after loading, before the session starts).
CLI_FLAG_CASES = [
    (["chat", "--steps", "-1"], 2, ["--steps", "positive integer"]),
    (["chat", "--steps", "abc"], 2, ["--steps", "integer"]),
    (["chat", "--temperature", "nan"], 2, ["--temperature", "finite"]),
    (["chat", "--temperature", "-0.5"], 2, ["--temperature", ">= 0"]),
    (["chat", "--block-length", "0"], 2, ["--block-length", "positive integer"]),
    (["chat", "--block-length", "5"], 2, ["--block-length", "max_new_tokens", "generation_config.json"]),
    (["chat", "--max-new-tokens", "16", "--block-length", "5"], 2, ["--block-length", "--max-new-tokens"]),
    (["chat", "--max-new-tokens", "8", "--steps", "16"], 2, ["--steps", "--max-new-tokens"]),
    (["chat", "--max-new-tokens", "16", "--block-length", "4", "--steps", "6"], 2, ["--steps", "blocks"]),
    (["chat", "--threshold", "2"], 2, ["--threshold", "(0, 1]"]),
    (["chat", "--threshold", "0"], 2, ["--threshold", "(0, 1]"]),
    (["chat", "--cfg-scale", "-1"], 2, ["--cfg-scale"]),
    (["chat", "--cfg-scale", "nan"], 2, ["--cfg-scale", "finite"]),
    (["chat", "--max-new-tokens", "0"], 2, ["--max-new-tokens", "positive integer"]),
    (["chat", "--dtype", "int3"], 2, ["--dtype", "invalid choice"]),
    (["chat", "--remasking", "best"], 2, ["--remasking"]),
    (["chat", "--bogus"], 2, ["--bogus"]),
    (["chat", "--model", "/nonexistent/model"], 1, ["/nonexistent/model"]),
    (["demo", "--device-map", "gpu0"], 2, ["--device-map", "unknown device"]),
    pytest.param(["demo", "--device-map", "cuda"], 2, ["--device-map", "no CUDA device"], marks=_NO_CUDA),
    pytest.param(["chat", "--device-map", "cuda:0"], 2, ["--device-map", "no CUDA device"], marks=_NO_CUDA),
    pytest.param(["demo", "--device-map", "0"], 2, ["--device-map", "no CUDA device"], marks=_NO_CUDA),
    (["memory", "--max-memory", "garbage"], 2, ["--max-memory", "DEVICE=SIZE"]),
    (["memory", "--max-memory", "0=lots"], 2, ["--max-memory", "22GiB"]),
    (["memory", "--batch-size", "-3"], 2, ["--batch-size", "positive integer"]),
    (["memory", "--max-new-tokens", "-100"], 2, ["--max-new-tokens", ">= 0"]),
    (["memory", "--max-new-tokens", "0"], 2, ["--max-new-tokens", "--prompt-length"]),
    (["memory", "--seq-len", "0"], 2, ["--seq-len", "positive integer"]),
    (["memory", "/nonexistent/config"], 1, ["/nonexistent/config"]),
    pytest.param(["eval", "--device", "cuda", "--tasks", "x"], 2, ["--device", "no CUDA device"], marks=_NO_CUDA),
    (["eval", "--model_args", "pretrained=/missing/path", "--tasks", "x"], 2, ["pretrained=/missing/path"]),
    (["eval", "--model_args", "pretrained=llada_hf/assets/demo,device_map=gpu0"], 2, ["device_map="]),
]


def _case_id(value) -> str | None:
    return "_".join(value) if isinstance(value, list) and value[0] in ("chat", "demo", "memory", "eval") else None


@pytest.mark.parametrize(("argv", "code", "names"), CLI_FLAG_CASES, ids=_case_id)
def test_cli_bad_flag_is_one_line(argv, code, names, tmp_path):
    result = _cli(*argv, cwd=tmp_path)
    assert_one_line_error(result, code, *names)
    assert not any(tmp_path.iterdir())  # nothing written next to the run


def _demo_export_folder(tmp_path: Path) -> Path:
    """A non-empty folder: a stale tokenizer from an earlier export (what `--format official` used to leave)."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    (folder / "sub").mkdir()
    (folder / "sub" / "x.txt").write_text("old")
    return folder


@pytest.mark.parametrize(
    ("extra", "code", "names"),
    [
        ([], 2, ["--output", "not empty", "--overwrite"]),  # refuses a non-empty folder
        (["--format", "official"], 2, ["--output", "--overwrite"]),
        (["--model", "/nonexistent/model", "--overwrite"], 1, ["/nonexistent/model"]),  # cleared only once loaded
        (["--format", "bin"], 2, ["--format"]),
    ],
)
def test_cli_export_into_a_non_empty_folder_is_refused_and_untouched(extra, code, names, tmp_path):
    from llada_hf.loading import DEMO_DIR

    folder = _demo_export_folder(tmp_path)
    before = folder_state(folder)
    argv = ["export", "--model", str(DEMO_DIR), "--output", str(folder), *extra]
    assert_one_line_error(_cli(*argv), code, *names)
    assert folder_state(folder) == before


def test_cli_export_output_that_is_a_file_or_the_model_folder(tmp_path):
    from llada_hf.loading import DEMO_DIR

    file = tmp_path / "model.txt"
    file.write_text("keep")
    before = folder_state(tmp_path)
    assert_one_line_error(_cli("export", "--model", str(DEMO_DIR), "--output", str(file)), 2, "--output", "a file")
    assert folder_state(tmp_path) == before and file.read_text() == "keep"
    demo = folder_state(DEMO_DIR)
    argv = ["export", "--model", str(DEMO_DIR), "--output", str(DEMO_DIR.parent), "--overwrite"]
    assert_one_line_error(_cli(*argv), 2, "--output", "--model")
    assert folder_state(DEMO_DIR) == demo


def test_cli_export_overwrite_clears_the_folder_first(tmp_path):
    """`--overwrite` empties the folder: no stale tokenizer survives next to the new official-layout weights."""
    from llada_hf.loading import DEMO_DIR

    folder = _demo_export_folder(tmp_path)
    result = _cli("export", "--model", str(DEMO_DIR), "--output", str(folder), "--format", "official", "--overwrite")
    assert result.returncode == 0, result.stderr
    written = set(folder_state(folder))
    assert "model.safetensors" in written and "config.json" in written
    assert not {"sub", "sub/x.txt"} & written
    if "tokenizer.json" in written:  # written by this export (the official export may save the tokenizer)
        assert (folder / "tokenizer.json").read_text() != "{}"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": -2}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"seq_len": -100}, "seq_len"),
        ({"max_memory": {0: "garbage"}, "device_map": "auto"}, "max_memory"),
        ({"block_length": 0}, "block_length"),
    ],
)
def test_estimate_memory_refuses_bad_sizes(kwargs, name):
    from llada_hf.hub import load_hub_config
    from llada_hf.memory import estimate_memory

    with pytest.raises(ValueError, match=name):
        estimate_memory(load_hub_config("llada_hf/tiny"), **kwargs)
