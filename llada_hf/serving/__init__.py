"""`llada-hf serve`: an OpenAI-compatible server (chat, completions, models) for every LLaDA family.

Built on `transformers serve`'s FastAPI app; requests are batched at the diffusion step (`engine.py`) and every
OpenAI field is honoured or refused with a 400 that names it (`protocol.py`). See docs/SERVING.md.
"""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..loading import DTYPES


def add_serve_args(sub) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the CLI's subparsers (dispatched through `args.serve_main`)."""
    serve = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/chat/completions, /v1/completions)")
    serve.add_argument("model", nargs="?", default=None, help="checkpoint folder or hub id (default: the demo model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-batch-size", type=int, default=8, help="rows denoised together at most (default 8)")
    serve.add_argument("--compile", action="store_true", help="compiled denoising step (generate(compile=True))")
    serve.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype")
    serve.add_argument("--device-map", default=None, help="accelerate placement (auto, cpu, cuda:0, ...)")
    serve.add_argument("--model-id", default=None, help="the name /v1/models reports (default: MODEL or 'demo')")
    serve.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default="warning", help="uvicorn's"
    )
    serve.set_defaults(serve_main=cmd_serve)
    return serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model once, then serve until interrupted."""
    if args.max_batch_size < 1:
        raise UsageError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    try:
        import uvicorn

        from .app import build_app
    except ImportError as error:
        raise UsageError(
            "llada-hf serve needs the [serve] extra (transformers >= 5.25 for its serving app, fastapi, uvicorn, "
            f"openai): pip install 'llada_hf[serve]' ({error})"
        ) from None
    import sys

    from ..loading import ModelLoadError, load_model_and_tokenizer

    try:
        model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, device_map=args.device_map)
    except ModelLoadError as error:
        print(f"llada-hf serve: error: {error}", file=sys.stderr)
        return 1
    model_id = args.model_id or args.model or "demo"
    if args.compile:  # compile before listening, not in the first client's request (minutes on a CPU)
        print("llada-hf serve: compiling the denoising step (one warm-up generate) ...", flush=True)
        hello = [{"role": "user", "content": "Hi"}]
        text = tokenizer.apply_chat_template(hello, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        model.generate(ids.to(model.device), compile=True)
    app, batcher = build_app(model, tokenizer, model_id, max_batch_size=args.max_batch_size, compile=args.compile)
    print(f"llada-hf serve: {model_id} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        batcher.shutdown()
    return 0


__all__ = ["add_serve_args", "cmd_serve"]
