"""LLaDA2.0 sampler: the exact block KV cache (`block_cache=True`, default) vs recomputing the prefix every step
(`block_cache=False`, the official computation), on a small random LLaDA2 config.

One process, same weights, interleaved: each repetition runs every variant once in a rotated order; ratios are paired
per repetition (median and IQR); warm-up excluded. UNCACHED (A/A) is the uncached run timed a second time: its ratio
to UNCACHED measures the noise. "same tokens" checks cached = uncached token for token on every repetition.

    OMP_NUM_THREADS=1 python bench/bench_llada2_cache.py --threads 1 --reps 7
    python bench/bench_llada2_cache.py --device cuda --dtype bfloat16   # GPU (pending)
"""

import argparse
import json
import platform
import statistics
import time

import torch
import transformers

import llada_hf


def build_model(device: str, dtype: torch.dtype, vocab: int):
    config = llada_hf.LLaDA2MoeConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
        moe_intermediate_size=128, num_shared_experts=1, first_k_dense_replace=1, max_position_embeddings=4096,
        mask_token_id=vocab - 2, pad_token_id=vocab - 1, eos_token_id=vocab - 1,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = llada_hf.LLaDA2MoeModelLM._from_config(config, dtype=dtype).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    return model, config


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[1], q[2] - q[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="steps per block")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    vocab = 8192
    model, config = build_model(args.device, dtype, vocab)
    variants = {"UNCACHED": False, "UNCACHED (A/A)": False, "CACHED": True}
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        generator = torch.Generator().manual_seed(batch)
        ids = torch.randint(0, vocab - 2, (batch, args.prompt), generator=generator).to(args.device)
        kwargs = dict(max_new_tokens=args.gen, block_length=args.block, steps=args.steps, threshold=None,
                      eos_token_id=None, return_dict_in_generate=True)  # fmt: skip

        def call(block_cache, ids=ids, kwargs=kwargs):
            return model.generate(ids, block_cache=block_cache, **kwargs)

        for block_cache in (False, True):  # warm-up
            call(block_cache)
        times = {name: [] for name in variants}
        same = True
        names = list(variants)
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            outs = {}
            for name in order:
                seconds, out = timed(lambda name=name: call(variants[name]), args.device)
                times[name].append(seconds)
                outs[name] = out
            same &= outs["CACHED"].sequences.tolist() == outs["UNCACHED"].sequences.tolist()
            nfe = outs["CACHED"].nfe
        for name in names:
            ratios = [u / t for u, t in zip(times["UNCACHED"], times[name], strict=True)]
            median, iqr = quartiles(ratios)
            wall = statistics.median(times[name])
            results.append(dict(batch=batch, variant=name, tok_s=args.gen * batch / wall, speedup=median, iqr=iqr,
                                nfe=nfe, same_tokens=same))  # fmt: skip
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or 'cpu'}, "
          f"threads {torch.get_num_threads()}, {args.device} {args.dtype}; P={args.prompt} G={args.gen} "
          f"block {args.block} steps/block {args.steps}")  # fmt: skip
    print("| B | variant | tok/s | × vs UNCACHED (IQR) | NFE | same tokens |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['batch']} | {r['variant']} | {r['tok_s']:.1f} | {r['speedup']:.2f} ({r['iqr']:.2f}) | "
              f"{r['nfe']} | {'yes' if r['same_tokens'] else 'NO'} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
