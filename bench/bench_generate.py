"""Generation benchmark: the official-semantics reference path vs the fast variants vs an autoregressive twin.

Everything runs in one process on the same weights, interleaved: each repetition runs every variant once in a
rotated order, and ratios are paired per repetition (median and IQR). Warm-up calls are excluded.

    python bench/bench_generate.py --device cpu            # tiny LLaDA (llada_hf/bench-cpu), fp32, ~1-2 minutes
    python bench/bench_generate.py --device cuda --compile # LLaDA-8B geometry, random bf16 weights

Variants: REF = no cache, 1 token/step, full-canvas logits (the computation of the official sampler; token-identical
to it); FAST = block-window logits (same tokens); FAST+compile; PREFIX / DUAL = Fast-dLLM caches (approximate: their
agreement with REF is reported); the same at k = 4 tokens/step; AR = a Llama of the same width/depth/vocab through
HF `generate()` with exactly G new tokens (dynamic cache; static cache + compile with --compile).
"""

import argparse
import gc
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import llada_hf
from llada_hf.hub import load_hub_config


def build_models(device: str, dtype: torch.dtype):
    if device == "cpu":
        config = load_hub_config("llada_hf/bench-cpu")
    else:
        config = load_hub_config("GSAI-ML/LLaDA-8B-Instruct")
    ar_config = LlamaConfig(
        vocab_size=config.vocab_size if device == "cpu" else 128256,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size if device == "cpu" else 14336,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads if device == "cpu" else 8,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    )
    with torch.device(device):
        torch.manual_seed(0)
        model = llada_hf.LLaDAModelLM._from_config(config, dtype=dtype).eval()
        ar = LlamaForCausalLM._from_config(ar_config, dtype=dtype).eval()
    for module in (model, ar):
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    return model, ar


def timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def forward_fraction(model, call, device: str) -> float:
    """Share of wall time spent inside model forwards (one separate instrumented run)."""
    spent = []
    original = model.forward

    def wrapped(*args, **kwargs):
        t, out = timed(lambda: original(*args, **kwargs), device)
        spent.append(t)
        return out

    model.forward = wrapped
    try:
        wall, _ = timed(call, device)
    finally:
        del model.forward
    return sum(spent) / wall


def make_calls(model, ar, prompt, gen: int, block: int, variants: dict, compile_ar: bool) -> dict:
    """One zero-argument callable per variant, all on the same prompt and output length."""
    common = dict(max_new_tokens=gen, block_length=block, return_dict_in_generate=True)
    calls = {name: partial(model.generate, prompt, **common, **kw) for name, kw in variants.items()}
    ar_kwargs = dict(max_new_tokens=gen, min_new_tokens=gen, do_sample=False, eos_token_id=None, pad_token_id=0)
    calls["AR dynamic"] = partial(ar.generate, prompt, **ar_kwargs)
    if compile_ar:
        calls["AR static+compile"] = partial(ar.generate, prompt, cache_implementation="static", **ar_kwargs)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prompt", type=int, default=None, help="prompt length (cpu 16, cuda 64)")
    parser.add_argument("--gen", type=int, default=None, help="new tokens (cpu 64, cuda 256)")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add compiled variants (slow to warm up on CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--variants", default=None, help="comma-separated subset to run (REF k=1 always kept)")
    parser.add_argument("--no-forward-fraction", action="store_true", help="skip the instrumented extra run")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args()
    device = args.device
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    prompt_len = args.prompt or (16 if device == "cpu" else 64)
    gen = args.gen or (64 if device == "cpu" else 256)
    model, ar = build_models(device, dtype)
    mask_id = model.config.mask_token_id

    variants = {
        "REF k=1": dict(fast=False, steps=gen),
        "REF k=1 (A/A)": dict(fast=False, steps=gen),
        "FAST k=1": dict(fast=True, steps=gen),
        "PREFIX k=1": dict(cache="prefix", steps=gen),
        "DUAL k=1": dict(cache="dual", steps=gen),
        "REF k=4": dict(fast=False, steps=gen // 4),
        "FAST k=4": dict(fast=True, steps=gen // 4),
        "DUAL k=4": dict(cache="dual", steps=gen // 4),
    }
    if args.compile:
        variants["FAST+compile k=1"] = dict(fast=True, steps=gen, compile=True)
        variants["DUAL+compile k=1"] = dict(cache="dual", steps=gen, compile=True)
    if args.variants:
        keep = {name.strip() for name in args.variants.split(",")} | {"REF k=1"}
        available = {*variants, "AR dynamic", *(["AR static+compile"] if args.compile else [])}
        if keep - available:
            parser.error(f"unknown variants {sorted(keep - available)}; choose from {sorted(available)}")
        if any("k=4" in name for name in keep):
            keep.add("REF k=4")
        variants = {name: kw for name, kw in variants.items() if name in keep}
    references = {"k=1": "REF k=1", "k=4": "REF k=4"}

    results = {"device": device, "dtype": str(dtype), "prompt": prompt_len, "gen": gen, "block": args.block,
               "reps": args.reps, "torch": torch.__version__, "transformers": transformers.__version__,
               "cpu": platform.processor() or platform.machine(), "threads": args.threads, "rows": []}  # fmt: skip
    if device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    for batch in args.batch:
        generator = torch.Generator().manual_seed(batch)
        prompt = torch.randint(0, mask_id, (batch, prompt_len), generator=generator).to(device)
        calls = make_calls(model, ar, prompt, gen, args.block, variants, args.compile)
        if args.variants:
            calls = {name: call for name, call in calls.items() if not name.startswith("AR") or name in keep}
        outputs = {}
        for name, call in calls.items():  # warm-up (2 calls for compiled variants), outputs kept for agreement
            for i in range(2 if "compile" in name else 1):
                seconds, outputs[name] = timed(call, device)
                print(f"B={batch} warm-up {i + 1} {name}: {seconds:.1f} s", flush=True)
        times = {name: [] for name in calls}
        gc.disable()
        try:
            for rep in range(args.reps):
                names = list(calls)
                names = names[rep % len(names) :] + names[: rep % len(names)]
                for name in names:
                    times[name].append(timed(calls[name], device)[0])
                done = ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items())
                print(f"B={batch} rep {rep + 1}: {done}", flush=True)
        finally:
            gc.enable()
        for name in calls:
            is_ar = name.startswith("AR")
            ref_name = references["k=4" if "k=4" in name else "k=1"]
            ratios = [r / t for r, t in zip(times[ref_name], times[name])]
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            med = statistics.median(times[name])
            row = {"variant": name, "batch": batch, "median_s": med, "tok_s": gen * batch / med,
                   "ratio_vs_ref": statistics.median(ratios), "ratio_iqr": q[2] - q[0], "vs": ref_name}  # fmt: skip
            if not is_ar:
                out = outputs[name]
                row["nfe"] = out.nfe
                row["tokens_per_forward"] = gen / out.nfe
                ref_seq = outputs[ref_name].sequences
                row["agreement_with_ref"] = (
                    (out.sequences[:, prompt_len:] == ref_seq[:, prompt_len:]).float().mean().item()
                )
                if not args.no_forward_fraction:
                    row["forward_fraction"] = forward_fraction(model, calls[name], device)
            results["rows"].append(row)
        ar_tok_s = {
            r["variant"]: r["tok_s"] for r in results["rows"] if r["batch"] == batch and r["variant"].startswith("AR")
        }
        for row in results["rows"]:
            if row["batch"] == batch and not row["variant"].startswith("AR"):
                row["vs_ar"] = {k: row["tok_s"] / v for k, v in ar_tok_s.items()}
    aa = [r for r in results["rows"] if r["variant"] == "REF k=1 (A/A)"]
    # The run is noisy when the A/A pair (REF against itself) is off 1.00 by > 3 % or its IQR exceeds 5 %.
    results["noise_flag"] = any(abs(r["ratio_vs_ref"] - 1) > 0.03 or r["ratio_iqr"] > 0.05 for r in aa)
    results["aa_check"] = [(r["batch"], r["ratio_vs_ref"], r["ratio_iqr"]) for r in aa]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"generate_{device}{args.tag}.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def render(results: dict) -> str:
    ar_names = sorted({k for r in results["rows"] for k in r.get("vs_ar", {})})
    header = "| B | variant | tok/s | × vs REF (IQR) | NFE | tok/fwd | fwd time | agree w/ REF | " + " | ".join(
        f"× vs {n}" for n in ar_names
    )
    lines = [header + " |", "|" + "---|" * (8 + len(ar_names))]
    for r in results["rows"]:
        vs_ar = " | ".join(f"{r['vs_ar'][n]:.2f}" if "vs_ar" in r else "" for n in ar_names)
        lines.append(
            f"| {r['batch']} | {r['variant']} | {r['tok_s']:.1f} | {r['ratio_vs_ref']:.2f} ({r['ratio_iqr']:.2f}) | "
            f"{r.get('nfe', '')} | {format(r['tokens_per_forward'], '.2g') if 'nfe' in r else ''} | "
            f"{format(r['forward_fraction'], '.0%') if 'forward_fraction' in r else ''} | "
            f"{format(r['agreement_with_ref'], '.2f') if 'nfe' in r else ''} | {vs_ar} |"
        )
    lines.append(f"\nA/A (batch, REF/REF median ratio, IQR): {results['aa_check']}; noisy: {results['noise_flag']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
