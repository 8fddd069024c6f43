"""`llada-hf` command line: demo, chat, export, memory, train, eval.

Flags are dash-case everywhere (`--max-new-tokens`, `--device-map`). `train` parses `TrainingArguments` with
`HfArgumentParser`, whose help lists the underscore names (`--max_steps`); it accepts the dash spelling too. `eval`
passes its arguments to lm-eval unchanged (lm-eval's own underscore flags: `--model_args`, `--batch_size`).
A model that cannot be loaded is reported in one line (exit 1), never a traceback.
"""

import argparse
import sys

from .loading import ATTN_IMPLEMENTATIONS, DTYPES, ModelLoadError, load_model_and_tokenizer


def _add_model_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """The loading flags every model-loading subcommand shares (`from_pretrained`'s arguments)."""
    group = parser.add_argument_group("model loading")
    default = "" if required else " (default: the embedded 0.7M-parameter demo model)"
    group.add_argument("--model", required=required, default=None, help=f"checkpoint folder or hub id{default}")
    group.add_argument("--dtype", default="auto", choices=DTYPES, help="weight dtype (auto: the checkpoint's)")
    group.add_argument(
        "--device-map",
        default=None,
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
    group.add_argument("--max-new-tokens", type=int, help="answer length (masks after the prompt)")
    group.add_argument("--steps", type=int, help="denoising steps (forwards) for the whole answer")
    group.add_argument("--block-length", type=int, help="semi-autoregressive block size")
    group.add_argument("--temperature", type=float, help="0 = greedy; > 0 samples (Gumbel-max)")
    group.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (0 = off)")
    group.add_argument("--remasking", choices=sorted(CONFIDENCE_RULES), help="confidence rule")
    group.add_argument("--threshold", type=float, help="commit every token above this confidence (Fast-dLLM)")


def _generation_kwargs(args: argparse.Namespace) -> dict:
    """Only the flags the user gave: the rest comes from the model's generation config."""
    names = ("max_new_tokens", "steps", "block_length", "temperature", "cfg_scale", "remasking", "threshold")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if "temperature" in kwargs:
        kwargs["do_sample"] = kwargs["temperature"] > 0
    return kwargs


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatSession
    from .progress import StepProgress
    from .visualize import DenoisingVisualizer

    model, tokenizer = _load(args)
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


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_official, export_remote_code

    model, tokenizer = _load(args)
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


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from .lm_eval_backend import main as lm_eval_main

    if args.quantize:  # the backend's `quantize=` model argument (HFLM takes no quantisation config from the CLI)
        rest = _with_model_arg(rest, "quantize", args.quantize)
    lm_eval_main(rest)
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from .training import train_main

    return train_main(rest)


def build_parser() -> argparse.ArgumentParser:
    from .memory import add_memory_args
    from .serving import add_serve_args

    parser = argparse.ArgumentParser(prog="llada-hf", description=__doc__.split("\n\n")[0])
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
    export.add_argument("--output", required=True, help="folder to write")

    memory = sub.add_parser("memory", help="memory per device of a model and one generation step (no weights read)")
    add_memory_args(memory)
    add_serve_args(sub)

    sub.add_parser("train", help="train or fine-tune (see `llada-hf train --help`)", add_help=False)
    evaluate = sub.add_parser("eval", help="lm-eval with the llada_hf backend (lm_eval's arguments)", add_help=False)
    from .quantize import QUANTIZE_CHOICES

    evaluate.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, default=None,
        help="quantise on load (int8 / int4 torchao, nf4 bitsandbytes on CUDA): `quantize=` in --model_args",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return cmd_train(args, rest)
    if args.command == "eval":
        return cmd_eval(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "serve":
        return args.serve_main(args)
    command = {"demo": cmd_demo, "chat": cmd_chat, "export": cmd_export, "memory": cmd_memory}[args.command]
    try:
        return command(args)
    except ModelLoadError as error:
        print(f"llada-hf {args.command}: error: {error}", file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
