"""`llada-hf` command line: demo, chat, export, memory, train, eval.

Flags are dash-case everywhere (`--max-new-tokens`, `--device-map`). `train` parses `TrainingArguments` with
`HfArgumentParser`, whose help lists the underscore names (`--max_steps`); it accepts the dash spelling too. `eval`
passes its arguments to lm-eval unchanged (lm-eval's own underscore flags: `--model_args`, `--batch_size`).

Every flag is checked when it is parsed (argparse `type=` functions below, the library's rules), before a model is
loaded or a file written; what needs the model (a `--block-length` against its `generation_config.json`) is checked
right after loading, before any work. Every failure is one line on stderr: exit 2 for bad usage (argparse errors and
`UsageError`), exit 1 for anything else; `llada-hf --debug COMMAND ...` re-raises to show the traceback.
"""

import argparse
import contextlib
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from .errors import UsageError
from .loading import ATTN_IMPLEMENTATIONS, DTYPES, ModelLoadError, load_model_and_tokenizer, looks_local

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
GENERATION_FLAGS = ("max_new_tokens", "steps", "block_length", "temperature", "cfg_scale", "remasking", "threshold")


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line ("llada-hf chat: error: argument --steps: ..."), no usage
    block, exit 2; subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


# ---------------------------------------------------------------------------------------------------------------------
# Flag types: the library's rules (`LLaDAGenerationConfig.validate`, `estimate_memory`), applied at parse time.


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {expected} (got {text!r})") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, block length, answer length, batch size)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {text})")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0 (a prompt length)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {text})")
    return value


def finite_nonneg_float(text: str) -> float:
    """A finite number >= 0 (temperature, cfg scale): nan and inf are refused, as `generate()` refuses them."""
    value = _number(text, float)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (got {text})")
    return value


def unit_interval(text: str) -> float:
    """A number in (0, 1] (a confidence threshold)."""
    value = _number(text, float)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1] (got {text})")
    return value


def device_map_value(text: str) -> str | int:
    """A `from_pretrained` device map: a strategy ("auto", ...), or one device ("cpu", "cuda:0", 0) that exists."""
    if text in DEVICE_MAP_STRATEGIES:
        return text
    return check_device(int(text) if text.isdigit() else text)


def check_device(device: str | int) -> str | int:
    """`device` if this machine has it; else `ArgumentTypeError` (a CUDA device on a CPU-only machine would fail
    deep inside torch with "Torch not compiled with CUDA enabled")."""
    import torch

    try:
        parsed = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {device!r} (give {', '.join(DEVICE_MAP_STRATEGIES)}, cpu, cuda, cuda:N or N)"
        ) from None
    if parsed.type == "cpu" or parsed.type == "meta":
        return device
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    available = backend is not None and getattr(backend, "is_available", lambda: False)()
    if not available:
        raise argparse.ArgumentTypeError(f"{device!r}: no {parsed.type.upper()} device is available on this machine")
    count = getattr(backend, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.index >= count:
        raise argparse.ArgumentTypeError(f"{device!r}: this machine has {count} {parsed.type.upper()} device(s)")
    return device


def _add_model_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """The loading flags every model-loading subcommand shares (`from_pretrained`'s arguments)."""
    group = parser.add_argument_group("model loading")
    default = "" if required else " (default: the embedded 0.7M-parameter demo model)"
    group.add_argument("--model", required=required, default=None, help=f"checkpoint folder or hub id{default}")
    group.add_argument("--dtype", default="auto", choices=DTYPES, help="weight dtype (auto: the checkpoint's)")
    group.add_argument(
        "--device-map",
        default=None,
        type=device_map_value,
        help='accelerate placement: "auto", "balanced", "sequential", "cpu", "cuda:0", ... (default: the GPU if any)',
    )
    group.add_argument(
        "--attn-implementation", default=None, choices=ATTN_IMPLEMENTATIONS, help="attention kernel (default: sdpa)"
    )
    quant = group.add_mutually_exclusive_group()
    quant.add_argument("--load-in-8bit", action="store_true", help="bitsandbytes 8-bit weights (CUDA only)")
    quant.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit weights (CUDA only)")
    if parser.prog.split()[-1] in ("demo", "chat"):
        from .quantize import QUANTIZE_CHOICES

        quant.add_argument(
            "--quantize", choices=QUANTIZE_CHOICES, default=None,
            help="quantise on load: int8 / int4 weight-only (torchao, CPU or GPU), nf4 (bitsandbytes, CUDA only)",
        )  # fmt: skip


def _load(args: argparse.Namespace):
    """(model, tokenizer) from the model-loading flags."""
    if getattr(args, "quantize", None):
        from .quantize import load_quantized

        return load_quantized(
            getattr(args, "model", None), args.quantize, dtype=getattr(args, "dtype", "auto"),
            device_map=getattr(args, "device_map", None),
            attn_implementation=getattr(args, "attn_implementation", None),
        )  # fmt: skip
    return load_model_and_tokenizer(
        getattr(args, "model", None),
        dtype=getattr(args, "dtype", "auto"),
        device_map=getattr(args, "device_map", None),
        attn_implementation=getattr(args, "attn_implementation", None),
        load_in_8bit=getattr(args, "load_in_8bit", False),
        load_in_4bit=getattr(args, "load_in_4bit", False),
    )


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    """Sampler flags; each one not given leaves the model's own `generation_config.json` value in force."""
    from .generation.generation_llada import CONFIDENCE_RULES

    group = parser.add_argument_group("generation (default: the model's generation_config.json)")
    group.add_argument("--max-new-tokens", type=positive_int, help="answer length (masks after the prompt)")
    group.add_argument("--steps", type=positive_int, help="denoising steps (forwards) for the whole answer")
    group.add_argument("--block-length", type=positive_int, help="semi-autoregressive block size")
    group.add_argument("--temperature", type=finite_nonneg_float, help="0 = greedy; > 0 samples (Gumbel-max)")
    group.add_argument("--cfg-scale", type=finite_nonneg_float, help="classifier-free guidance scale (0 = off)")
    group.add_argument("--remasking", choices=sorted(CONFIDENCE_RULES), help="confidence rule")
    group.add_argument(
        "--threshold", type=unit_interval, help="commit every token above this confidence, in (0, 1] (Fast-dLLM)"
    )


def _generation_kwargs(args: argparse.Namespace) -> dict:
    """Only the flags the user gave: the rest comes from the model's generation config."""
    kwargs = {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name, None) is not None}
    if "temperature" in kwargs:
        kwargs["do_sample"] = kwargs["temperature"] > 0
    return kwargs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_block_plan(max_new_tokens: int, steps: int | None, block_length: int | None, schedule: bool) -> None:
    """generate()'s block-plan rules (`_diffusion_plan`), on the flags alone: `UsageError` naming them."""
    block = block_length or max_new_tokens
    if max_new_tokens % block:
        raise UsageError(f"--block-length ({block}) must divide --max-new-tokens ({max_new_tokens})")
    if schedule and steps is not None:
        if steps > max_new_tokens:
            raise UsageError(f"--steps ({steps}) must be <= --max-new-tokens ({max_new_tokens})")
        if steps % (max_new_tokens // block):
            blocks = max_new_tokens // block
            raise UsageError(f"--steps ({steps}) must be divisible by the number of blocks ({blocks})")


def check_generation_flags(args: argparse.Namespace) -> None:
    """Before loading: the cross-flag rules among the flags given (the model's values are checked after loading)."""
    if getattr(args, "max_new_tokens", None) is not None:
        check_block_plan(args.max_new_tokens, args.steps, args.block_length, args.threshold is None)


def check_generation_with_model(model, kwargs: dict) -> None:
    """After loading, before the session starts: the flags merged with the model's `generation_config.json`, through
    generate()'s own checks (its config merge and block plan, on a one-token prompt). `UsageError` naming the flag."""
    import torch

    prepare = getattr(model, "_prepare_diffusion_config", None)
    if prepare is None:
        return
    try:
        config, steps_per_token = prepare(None, dict(kwargs))
        prompt = torch.full((1, 1), 1 if config.mask_token_id == 0 else 0, dtype=torch.long)
        model._diffusion_plan(prompt, None, config, steps_per_token=steps_per_token)
    except ValueError as error:
        message = " ".join(str(error).split()).rstrip(".")
        for name in GENERATION_FLAGS:  # the user's flags by their flag names; the rest is the model's value
            model_value = rf"the model's {name} (\1, from generation_config.json)"
            named = rf"{_flag(name)} (\1)" if name in kwargs else model_value
            message = re.sub(rf"(?<![-\w]){name} \(([^)]*)\)", named, message)
        raise UsageError(message) from error


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatSession
    from .progress import StepProgress
    from .visualize import DenoisingVisualizer

    check_generation_flags(args)
    model, tokenizer = _load(args)
    check_generation_with_model(model, _generation_kwargs(args))
    session = ChatSession(model, tokenizer, **_generation_kwargs(args))
    print("Chat with LLaDA (empty line or 'exit' to quit).", flush=True)
    for line in sys.stdin:
        message = line.strip()
        if not message or message == "exit":
            break
        steps = session.generate_kwargs.get("steps") or model.generation_config.steps
        if args.visualize:
            streamer = DenoisingVisualizer(tokenizer, total_steps=steps)
        else:
            streamer = StepProgress(steps)  # a bar on a terminal, nothing when piped
        reply = session.send(message, streamer=streamer)
        print(f"LLaDA: {reply}", flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args, load=_load)


def check_export_output(args: argparse.Namespace) -> None:
    """Before loading: `--output` must be a new or empty folder (or `--overwrite`), and not the model's own folder."""
    output = Path(args.output).expanduser()
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {args.output} is a file, not a folder")
    model = Path(args.model).expanduser()
    if model.exists() and output.exists() and output.resolve() in (model.resolve(), *model.resolve().parents):
        raise UsageError(f"--output {args.output} holds the --model checkpoint: write to another folder")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise UsageError(f"--output {args.output} is not empty: pass --overwrite to replace its contents")


def _clear_folder(folder: Path) -> None:
    """Empty `folder` (kept), so no file of an earlier export (an old tokenizer) survives next to the new one."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_official, export_remote_code

    check_export_output(args)
    model, tokenizer = _load(args)
    if Path(args.output).expanduser().is_dir():  # --overwrite (checked above), cleared only once the model loaded
        _clear_folder(Path(args.output).expanduser())
    if args.format == "official":
        export_official(model, args.output, tokenizer=tokenizer)
    else:
        export_remote_code(model, args.output, tokenizer=tokenizer)
    print(f"wrote {args.format} checkpoint to {args.output}")
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from .memory import main as memory_main

    return memory_main(args)


def _with_model_arg(rest: list[str], key: str, value: str) -> list[str]:
    """lm-eval's arguments with `key=value` appended to `--model_args` (added when absent)."""
    rest = list(rest)
    for i, arg in enumerate(rest):
        if arg == "--model_args" and i + 1 < len(rest):
            rest[i + 1] = f"{rest[i + 1]},{key}={value}" if rest[i + 1] else f"{key}={value}"
            return rest
        if arg.startswith("--model_args="):
            rest[i] = f"{arg},{key}={value}" if arg != "--model_args=" else f"{arg}{key}={value}"
            return rest
    return [*rest, "--model_args", f"{key}={value}"]


def _option(rest: list[str], name: str) -> str | None:
    """The value of `name` in lm-eval's arguments (`--name value` or `--name=value`); the last one wins."""
    value = None
    for i, arg in enumerate(rest):
        if arg == name and i + 1 < len(rest):
            value = rest[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def check_eval_args(rest: list[str]) -> None:
    """Before lm-eval starts: `--device` and `--model_args device=/device_map=` exist here, and a local-looking
    `pretrained=` path exists (lm-eval would fail deep inside with a traceback)."""
    device = _option(rest, "--device")
    model_args = dict(
        pair.split("=", 1) for pair in (_option(rest, "--model_args") or "").split(",") if "=" in pair
    )  # fmt: skip
    for flag, value in (("--device", device), ("device=", model_args.get("device"))):
        if value:
            try:
                check_device(int(value) if value.isdigit() else value)
            except argparse.ArgumentTypeError as error:
                raise UsageError(f"{flag if flag.startswith('--') else '--model_args ' + flag}: {error}") from error
    if model_args.get("device_map"):
        try:
            device_map_value(model_args["device_map"])
        except argparse.ArgumentTypeError as error:
            raise UsageError(f"--model_args device_map=: {error}") from error
    path = model_args.get("pretrained", "")
    if path and looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        raise UsageError(f"--model_args pretrained={path}: no such folder")


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """`train` and `eval` parse their own flags (`HfArgumentParser`, lm-eval's parser): their argparse usage errors
    are one line too, while they run under `llada-hf`."""
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = Parser.error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    check_eval_args(rest)
    from .lm_eval_backend import main as lm_eval_main

    if args.quantize:  # the backend's `quantize=` model argument (HFLM takes no quantisation config from the CLI)
        rest = _with_model_arg(rest, "quantize", args.quantize)
    with _one_line_usage_errors():
        lm_eval_main(rest)
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from .training import train_main

    with _one_line_usage_errors():
        return train_main(rest)


def build_parser() -> argparse.ArgumentParser:
    from .memory import add_memory_args
    from .serving import add_serve_args

    parser = Parser(prog="llada-hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (before COMMAND)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="generate with the embedded demo model, showing the denoising")
    _add_model_args(demo)
    demo.add_argument("--prompt", action="append", default=None, help="a user message (repeatable)")
    demo.add_argument("--no-visualize", action="store_true", help="no canvas drawing (a progress bar on a terminal)")

    chat = sub.add_parser("chat", help="multi-turn chat on stdin (official chat.py semantics)")
    _add_model_args(chat)
    chat.add_argument("--visualize", action="store_true", help="draw the canvas while it denoises")
    _add_generation_args(chat)

    export = sub.add_parser("export", help="write an official-layout or trust_remote_code checkpoint")
    _add_model_args(export, required=True)
    export.add_argument(
        "--format", choices=["official", "remote-code"], default="remote-code", help="layout of the written checkpoint"
    )
    export.add_argument("--output", required=True, help="folder to write (new or empty, unless --overwrite)")
    export.add_argument("--overwrite", action="store_true", help="empty a non-empty --output folder, then write")

    memory = sub.add_parser("memory", help="memory per device of a model and one generation step (no weights read)")
    add_memory_args(memory)
    for command in (demo, chat, export, memory):  # `--debug` after the command too (train/eval: their own flags)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_serve_args(sub)

    sub.add_parser("train", help="train or fine-tune (see `llada-hf train --help`)", add_help=False)
    evaluate = sub.add_parser("eval", help="lm-eval with the llada_hf backend (lm_eval's arguments)", add_help=False)
    from .quantize import QUANTIZE_CHOICES

    evaluate.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, default=None,
        help="quantise on load (int8 / int4 torchao, nf4 bitsandbytes on CUDA): `quantize=` in --model_args",
    )  # fmt: skip
    return parser


def _one_line(error: BaseException) -> str:
    """The error as one line: its message (type name added where the message alone would not say what failed)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (UsageError, ModelLoadError)):
        return text
    return f"{type(error).__name__}: {text} (run `llada-hf --debug ...` for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """`llada-hf COMMAND ...`; returns the exit code: 0, 2 for bad usage, 1 for a failure (one line on stderr)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("train", "eval"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "train":
            return cmd_train(args, rest)
        if args.command == "eval":
            return cmd_eval(args, rest)
        if args.command == "serve":
            return args.serve_main(args)
        command = {"demo": cmd_demo, "chat": cmd_chat, "export": cmd_export, "memory": cmd_memory}[args.command]
        return command(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"llada-hf {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1


__all__ = [
    "Parser",
    "build_parser",
    "check_device",
    "device_map_value",
    "finite_nonneg_float",
    "main",
    "nonneg_int",
    "positive_int",
    "unit_interval",
]

if __name__ == "__main__":
    sys.exit(main())
