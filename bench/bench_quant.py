"""Quantised inference on CPU: fp32 vs torchao int8 / int4 weight-only (`llada_hf.quantize`), per variant:

* stored bytes: the weight files written by `save_pretrained` (`get_memory_footprint()` is shown beside it: it counts
  a tensor subclass at its outer fp32 size);
* peak memory: peak RSS of a fresh process that loads the variant and answers the demo prompts, and the same
  process without a model (its baseline: torch + transformers + torchao imported);
* held-out accuracy of the demo model (its 300 held-out pairs, the phrasing draw of scripts/train_demo_model.py);
* token agreement with fp32 on the golden checkpoint (tests/fixtures/golden_tiny, its greedy generate cases);
* ms per answer: the demo model at B=1, its default 16 steps, interleaved over variants, warm-up excluded.

    python bench/bench_quant.py --threads 1          # ~2 min; writes bench/results/quant_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import llada_hf
from llada_hf.demo import DEMO_DIR, PHRASINGS, answer_questions, arithmetic_answer, load_demo_model, split_pairs
from llada_hf.quantize import quantization_config, stored_bytes, torchao_available

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden_tiny"


def load(path, variant: str):
    """The model at `path` (None: the demo model) in fp32, quantised on load unless `variant` is "fp32"."""
    from transformers import AutoModel

    llada_hf.register()
    path = DEMO_DIR if path is None else path
    extra = {} if variant == "fp32" else {"quantization_config": quantization_config(variant)}
    return AutoModel.from_pretrained(path, dtype=torch.float32, **extra).eval()


def held_out(n: int) -> list[tuple[str, str]]:
    rng = random.Random(0)
    return [(rng.choice(PHRASINGS).format(a=a, b=b), arithmetic_answer(a, b)) for a, b in split_pairs()[1]][:n]


def accuracy(model, tokenizer, questions) -> float:
    correct = 0
    for start in range(0, len(questions), 100):
        chunk = questions[start : start + 100]
        answers = answer_questions(model, tokenizer, [q for q, _ in chunk])
        correct += sum(a == e for a, (_, e) in zip(answers, chunk))
    return correct / len(questions)


def golden_agreement(variant: str, reference: dict | None) -> tuple[float, dict]:
    """Fraction of generated tokens equal to fp32's on the golden checkpoint's greedy generate cases."""
    cases = [c for c in json.loads((GOLDEN / "cases.json").read_text())["generate"] if c.get("seed") is None]
    model = load(GOLDEN, variant)
    outputs = {}
    for case in cases:
        kwargs = dict(case["kwargs"])
        kwargs["max_new_tokens"] = kwargs.pop("gen_length")
        prompt = torch.tensor(case["prompt"])
        outputs[case["name"]] = model.generate(prompt, **kwargs)[:, prompt.shape[1] :]
    if reference is None:
        return 1.0, outputs
    same = sum(int((outputs[k] == reference[k]).sum()) for k in outputs)
    total = sum(v.numel() for v in outputs.values())
    return same / total, outputs


def peak_rss_mb(variant: str | None) -> float:
    """Peak RSS (MiB) of a fresh process that loads `variant` and answers the demo prompts (None: no model)."""
    code = (
        "import resource, sys, torch; sys.path.insert(0, 'bench'); torch.set_num_threads(1)\n"
        "import bench_quant as b\n"
        "from llada_hf.demo import DEMO_PROMPTS, answer_questions, load_demo_model\n"
        f"variant = {variant!r}\n"
        "if variant:\n"
        "    model = b.load(None, variant); tok = load_demo_model()[1]\n"
        "    answer_questions(model, tok, list(DEMO_PROMPTS))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timed", type=int, default=16, help="questions per timed cell (B=1)")
    parser.add_argument("--questions", type=int, default=300, help="held-out questions for accuracy")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = ["fp32"] + (["int8", "int4"] if torchao_available() else [])
    _, tokenizer = load_demo_model()
    questions = held_out(args.questions)
    models, rows, reference = {}, {}, None
    for variant in variants:
        model = load(None if variant != "fp32" else DEMO_DIR, variant)
        models[variant] = model
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            size = stored_bytes(folder)
        agreement, outputs = golden_agreement(variant, reference)
        reference = reference or outputs
        rows[variant] = {
            "variant": variant, "stored_bytes": size, "get_memory_footprint": model.get_memory_footprint(),
            "accuracy": accuracy(model, tokenizer, questions), "golden_agreement_with_fp32": agreement,
            "peak_rss_mb": peak_rss_mb(variant),
        }  # fmt: skip
        print(rows[variant], flush=True)
    baseline_rss = peak_rss_mb(None)
    timed = [q for q, _ in questions[: args.timed]]
    for variant in variants:  # warm-up
        answer_questions(models[variant], tokenizer, timed[:1])
    times = {v: [] for v in variants}
    for rep in range(args.reps):
        for variant in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
            start = time.perf_counter()
            for q in timed:
                answer_questions(models[variant], tokenizer, [q])
            times[variant].append((time.perf_counter() - start) / len(timed))
    for variant in variants:
        ratios = [f / t for f, t in zip(times["fp32"], times[variant])]
        rows[variant]["ms_per_answer"] = 1000 * statistics.median(times[variant])
        rows[variant]["speedup_vs_fp32"] = statistics.median(ratios)
    results = {
        "command": "python bench/bench_quant.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
        "transformers": transformers.__version__, "torchao": _torchao_version(),
        "cpu": platform.processor() or platform.machine(), "baseline_peak_rss_mb": baseline_rss,
        "this_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": list(rows.values()),
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quant_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


def _torchao_version() -> str | None:
    if not torchao_available():
        return None
    import torchao

    return torchao.__version__


def render(results: dict) -> str:
    lines = [
        "| variant | stored bytes | get_memory_footprint() | peak RSS (MiB) | held-out accuracy (%) | "
        "golden token agreement with fp32 | ms/answer (B=1) | × vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['variant']} | {r['stored_bytes']:,} | {r['get_memory_footprint']:,} | {r['peak_rss_mb']:.0f} | "
            f"{100 * r['accuracy']:.1f} | {r['golden_agreement_with_fp32']:.3f} | {r['ms_per_answer']:.1f} | "
            f"{r['speedup_vs_fp32']:.2f} |"
        )
    lines.append(f"\nBaseline peak RSS without a model: {results['baseline_peak_rss_mb']:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
