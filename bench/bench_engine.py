"""The generate engine against its predecessor, and the compiled step against eager, in one process.

The previous `generate()` (the monolithic loop before the engine redesign, read from git at `--baseline`) runs on the
same weights as the current one through a subclass whose mixin comes first, so each call differs only in the sampler
code. Every repetition runs every variant once in rotated order; ratios are paired per repetition (median, IQR);
warm-up (and compilation) excluded. An A/A pair (the current default against itself) measures the noise.

    python bench/bench_engine.py --threads 1 --reps 7      # tiny LLaDA (llada_hf/bench-cpu), fp32, a few minutes

Variants: OLD = previous engine, default path (block-window logits); NEW = current engine, default path;
NEW compile = `compile=True` (the whole step through torch.compile, inductor, fullgraph, dynamic shapes).
"""

import argparse
import copy
import gc
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import llada_hf
from llada_hf.hub import load_hub_config

ROOT = Path(__file__).resolve().parents[1]


def load_baseline(rev: str):
    """The generation module as it was at `rev`, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:generation/generation_llada.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "generation_llada_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("generation_llada_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="7809832", help="git revision of the previous engine")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    baseline = load_baseline(args.baseline)
    config = load_hub_config("llada_hf/bench-cpu")
    torch.manual_seed(0)
    model = llada_hf.LLaDAModelLM(config).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)

    class OldLM(baseline.DiffusionGenerationMixin, llada_hf.LLaDAModelLM):
        pass

    old = copy.copy(model)  # shares every module and weight
    old.__class__ = OldLM
    old.generation_config = baseline.LLaDAGenerationConfig(mask_token_id=config.mask_token_id)

    common = dict(max_new_tokens=args.gen, steps=args.gen, block_length=args.block, return_dict_in_generate=True)
    results = {"prompt": args.prompt, "gen": args.gen, "block": args.block, "reps": args.reps,
               "baseline": args.baseline, "torch": torch.__version__, "transformers": transformers.__version__,
               "cpu": platform.processor() or platform.machine(), "threads": args.threads, "rows": []}  # fmt: skip
    for batch in args.batch:
        prompt = torch.randint(
            0, config.mask_token_id, (batch, args.prompt), generator=torch.Generator().manual_seed(1)
        )
        calls = {
            "OLD default": lambda p=prompt: old.generate(p, **common),
            "NEW default": lambda p=prompt: model.generate(p, **common),
            "NEW default (A/A)": lambda p=prompt: model.generate(p, **common),
        }
        if not args.no_compile:
            calls["NEW compile"] = lambda p=prompt: model.generate(p, compile=True, **common)
        outputs, warm = {}, {}
        for name, call in calls.items():
            start = time.perf_counter()
            outputs[name] = call()
            warm[name] = time.perf_counter() - start
        times = {name: [] for name in calls}
        gc.disable()
        try:
            for rep in range(args.reps):
                names = list(calls)[rep % len(calls) :] + list(calls)[: rep % len(calls)]
                for name in names:
                    start = time.perf_counter()
                    calls[name]()
                    times[name].append(time.perf_counter() - start)
        finally:
            gc.enable()
        reference = outputs["NEW default"].sequences
        for name in calls:
            ratios = [r / t for r, t in zip(times["NEW default"], times[name])]
            q = statistics.quantiles(ratios, n=4)
            med = statistics.median(times[name])
            results["rows"].append({
                "batch": batch, "variant": name, "median_s": med, "tok_s": args.gen * batch / med,
                "speed_vs_new_default": statistics.median(ratios), "iqr": q[2] - q[0], "first_call_s": warm[name],
                "same_tokens": bool(torch.equal(outputs[name].sequences, reference)),
            })  # fmt: skip
    aa = [r for r in results["rows"] if r["variant"] == "NEW default (A/A)"]
    results["noise_flag"] = any(abs(r["speed_vs_new_default"] - 1) > 0.03 or r["iqr"] > 0.05 for r in aa)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_cpu.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| B | variant | tok/s | speed × vs NEW default (IQR) | first call s | same tokens |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['batch']} | {r['variant']} | {r['tok_s']:.1f} | {r['speed_vs_new_default']:.2f} "
                     f"({r['iqr']:.2f}) | {r['first_call_s']:.1f} | {r['same_tokens']} |")  # fmt: skip
    lines.append(f"\nnoisy (A/A off 1.00 by > 3 % or IQR > 5 %): {results['noise_flag']}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
