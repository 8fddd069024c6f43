"""`llada-hf` command line: demo, chat, export, train, eval."""

import argparse
import sys

import torch


def _load(model_path: str | None, dtype: str = "auto"):
    """(model, tokenizer): a local folder / hub id, or the embedded demo model when no path is given."""
    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        from .demo import load_demo_model

        return load_demo_model()
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModel.from_pretrained(model_path, dtype=torch_dtype).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, AutoTokenizer.from_pretrained(model_path)


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
    from .visualize import DenoisingVisualizer

    model, tokenizer = _load(args.model, args.dtype)
    session = ChatSession(model, tokenizer, **_generation_kwargs(args))
    print("Chat with LLaDA (empty line or 'exit' to quit).", flush=True)
    for line in sys.stdin:
        message = line.strip()
        if not message or message == "exit":
            break
        steps = session.generate_kwargs.get("steps") or model.generation_config.steps
        streamer = DenoisingVisualizer(tokenizer, total_steps=steps) if args.visualize else None
        reply = session.send(message, streamer=streamer)
        print(f"LLaDA: {reply}", flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_official, export_remote_code

    model, tokenizer = _load(args.model, "auto")
    if args.format == "official":
        export_official(model, args.output)
    else:
        export_remote_code(model, args.output, tokenizer=tokenizer)
    print(f"wrote {args.format} checkpoint to {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from .lm_eval_backend import main as lm_eval_main

    lm_eval_main(rest)
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from .training import train_main

    return train_main(rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llada-hf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate with the embedded demo model, showing the denoising")
    demo.add_argument("--model", default=None, help="model folder or hub id (default: the embedded demo model)")
    demo.add_argument("--prompt", action="append", default=None, help="prompt (repeatable)")
    demo.add_argument("--no-visualize", action="store_true")
    demo.add_argument("--dtype", default="auto")

    chat = sub.add_parser("chat", help="multi-turn chat (official chat.py semantics)")
    chat.add_argument("--model", default=None, help="model folder or hub id (default: the embedded demo model)")
    chat.add_argument("--dtype", default="auto")
    chat.add_argument("--visualize", action="store_true", help="draw the canvas while it denoises")
    _add_generation_args(chat)

    export = sub.add_parser("export", help="write an official-layout or trust_remote_code checkpoint")
    export.add_argument("--model", required=True)
    export.add_argument("--format", choices=["official", "remote-code"], default="remote-code")
    export.add_argument("--output", required=True)

    sub.add_parser("train", help="train or fine-tune (see `llada-hf train --help`)", add_help=False)
    sub.add_parser("eval", help="lm-eval with the llada_hf backend (lm_eval's arguments)", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return cmd_train(args, rest)
    if args.command == "eval":
        return cmd_eval(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"demo": cmd_demo, "chat": cmd_chat, "export": cmd_export}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
