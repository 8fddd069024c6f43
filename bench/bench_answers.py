"""Answer benchmark: time to a correct answer of a masked-diffusion model vs its autoregressive twin.

Two tasks with trained models and an exact-match metric:

* demo: the embedded demo model (chat addition, `llada_hf/assets/demo`), its 300 held-out operand pairs;
* clock: the clock walk of `experiments/planning.py` (5 positions), MDM and AR trained here from scratch.

The AR twin has the MDM's size (same `LLaDAConfig`: width, depth, heads, MLP, vocabulary, RoPE) and is trained on
the same data with the same budget (steps x batch, learning rate) by the experiments' training loop
(`experiments/common.py`: causal mask, next-token loss), then copied into a `LlamaForCausalLM` (the architectures
share every weight name) and decoded by HF `generate()` (greedy, stops at EOS / EoT). Trained twins are cached
under `--cache-dir` (reruns do not retrain; the key holds the task and the budget).

Variants: MDM with the reference schedule (1 token per step), fixed k tokens per step, confidence threshold
(Fast-dLLM), threshold + dual cache, all eager; the reference schedule and threshold also compiled
(`generate(compile=True)`: the whole step through torch.compile, fullgraph, dynamic shapes). AR twin: `generate()`
with the dynamic cache (eager), and with a static cache + torch.compile (`cache_implementation="static"` plus a
`CompileConfig`, transformers' own auto-compile of the decoding forward; on a CPU it needs `_compile_all_devices`).
Each timed cell is warmed up first (compilation happens there; its seconds are recorded as `warmup_s`, and
`compile_s` = warm-up minus one timed pass); then accuracy once per variant on the whole test set (batches of 100;
a compiled variant's answers are compared with its eager twin's); then timing on a fixed subset of `--timed`
questions, as B=1 (one call per question) and B=8 (one call per 8 questions), in one process, interleaved (each
repetition runs every cell once in a rotated order); ms/answer = cell time / questions. An A/A pair (the reference
schedule timed twice) flags a noisy run (A/A median ratio off 1 by > 3 % or IQR > 5 %).

    python bench/bench_answers.py --threads 1            # trains the twins once (demo twin: 2545 s measured), compiles
    python bench/bench_answers.py --quick --out /tmp/q   # CI-sized smoke run (seconds; no compiled variants)

The claim: the fastest MDM variant at B=1 whose accuracy is within 1 point of the best accuracy of any variant, as a
ratio of the AR twin's (dynamic cache) ms/answer to it (> 1: diffusion is faster per answer); the same against the
fastest AR variant is recorded too.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import CompileConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
from common import EOS, Backbone, build_model, to_llama, train  # noqa: E402
from planning import ClockWalk  # noqa: E402

from llada_hf import LLaDAConfig, LLaDAModelLM  # noqa: E402
from llada_hf.demo import (  # noqa: E402
    DEMO_MODEL_CONFIG,
    PHRASINGS,
    arithmetic_answer,
    arithmetic_rows,
    load_demo_model,
    split_pairs,
)

DEMO_BUDGET = dict(steps=8000, batch_size=64, lr=1e-3, warmup=200)  # scripts/train_demo_model.py's recipe
CLOCK_BUDGET = dict(steps=2500, batch_size=64, lr=1e-3, positions=5)  # experiments/decoding.py's recipe
CLOCK_BACKBONE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=192)


# ---------------------------------------------------------------------------------------------------------------------
# AR twins


def demo_ar_batches(tokenizer, batch_size: int, seed: int):
    """Next-batch function over the demo's training rows (shuffled epochs): prompt + answer + <|eot_id|> + EOS,
    right-padded with EOS (the causal mask makes right padding invisible to earlier tokens)."""
    train_pairs, _ = split_pairs()
    rows = arithmetic_rows(train_pairs)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    tokenized: dict[int, tuple[list[int], int]] = {}  # row -> (sequence, prompt length), filled as rows are drawn

    def encode(i: int) -> tuple[list[int], int]:
        if i not in tokenized:
            messages = rows[i]["messages"]
            prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)  # fmt: skip
            answer = tokenizer(messages[1]["content"], add_special_tokens=False).input_ids
            tokenized[i] = (prompt + answer + [eot, EOS_DEMO], len(prompt))
        return tokenized[i]

    rng = random.Random(seed)
    order: list[int] = []

    def next_batch(step: int):
        nonlocal order
        if len(order) < batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order = order + fresh
        chosen, order = order[:batch_size], order[batch_size:]
        encoded = [encode(i) for i in chosen]
        width = max(len(sequence) for sequence, _ in encoded)
        ids = torch.full((batch_size, width), EOS_DEMO)
        for r, (sequence, _) in enumerate(encoded):
            ids[r, : len(sequence)] = torch.tensor(sequence)
        return ids, torch.tensor([length for _, length in encoded])

    return next_batch


EOS_DEMO = DEMO_MODEL_CONFIG["eos_token_id"]


def cached_model(cache: Path, config: LLaDAConfig, build_and_train) -> tuple[LLaDAModelLM, dict]:
    """Load `cache`.safetensors/.json if present, else train (`build_and_train() -> (model, record)`) and save."""
    weights, meta = cache.parent / f"{cache.name}.safetensors", cache.parent / f"{cache.name}.json"
    if weights.is_file() and meta.is_file():
        model = LLaDAModelLM(config)
        model.load_state_dict(load_file(weights))
        record = json.loads(meta.read_text())
        record["cached"] = True
        return model.eval(), record
    model, record = build_and_train()
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    meta.write_text(json.dumps(record, indent=2))
    record["cached"] = False
    return model.eval(), record


def demo_twin(budget: dict, cache_dir: Path, tokenizer) -> tuple[LlamaForCausalLM, dict]:
    config = LLaDAConfig(**DEMO_MODEL_CONFIG)
    key = f"demo_ar_s{budget['steps']}_b{budget['batch_size']}_lr{budget['lr']:g}"

    def build_and_train():
        torch.manual_seed(0)
        model = LLaDAModelLM(config)
        batches = demo_ar_batches(tokenizer, budget["batch_size"], seed=0)
        record = train(model, "ar", batches, budget["steps"], budget["lr"], seed=0,
                       warmup=min(budget["warmup"], budget["steps"] // 10), log_every=500)  # fmt: skip
        return model, {**record, **budget}

    model, record = cached_model(cache_dir / key, config, build_and_train)
    return to_llama(model), record


def clock_models(budget: dict, cache_dir: Path) -> tuple[LLaDAModelLM, LlamaForCausalLM, dict, ClockWalk]:
    task = ClockWalk(budget["positions"])
    length = task.prompt_length + task.answer_length
    models, records = {}, {}
    for kind in ("mdm", "ar"):
        config = Backbone(**CLOCK_BACKBONE).config(task.vocab_size, length)
        key = f"clock{budget['positions']}_{kind}_s{budget['steps']}_b{budget['batch_size']}_lr{budget['lr']:g}"

        def build_and_train(kind=kind):
            model = build_model(Backbone(**CLOCK_BACKBONE), task.vocab_size, length, seed=0)
            record = train(model, kind, task.batches(budget["batch_size"], 0), budget["steps"], budget["lr"], 0,
                           warmup=min(100, budget["steps"] // 10))  # fmt: skip
            return model, {**record, **budget}

        models[kind], records[kind] = cached_model(cache_dir / key, config, build_and_train)
    mdm = models["mdm"]
    mdm.generation_config.update(mask_token_id=1, eos_token_id=EOS, pad_token_id=EOS, eot_token_id=None)
    return mdm, to_llama(models["ar"]), records, task


# ---------------------------------------------------------------------------------------------------------------------
# Tasks as (prompts, expected answers, decode functions)


class Task:
    """Test prompts (left-padded per batch), a checker, and per-variant decoders returning (answers ok, forwards)."""

    def __init__(self, name, prompts: list[list[int]], check, canvas: int, pad: int, ar_stop: list[int]):
        self.name, self.prompts, self.check, self.canvas, self.pad, self.ar_stop = (
            name, prompts, check, canvas, pad, ar_stop,
        )  # fmt: skip

    def batch(self, indices: list[int]) -> tuple[torch.LongTensor, torch.LongTensor]:
        width = max(len(self.prompts[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for r, i in enumerate(indices):
            n = len(self.prompts[i])
            ids[r, width - n :] = torch.tensor(self.prompts[i])
            mask[r, width - n :] = 1
        return ids, mask


def mdm_call(model, task: Task, indices: list[int], **kwargs):
    ids, mask = task.batch(indices)
    settings = dict(max_new_tokens=task.canvas, block_length=task.canvas, return_dict_in_generate=True)
    settings.update(kwargs)
    if mask.all():
        out = model.generate(ids, **settings)
    else:
        out = model.generate(ids, attention_mask=mask, **settings)
    return out.sequences[:, ids.shape[1] :], out.nfe


def ar_compile_config(device: torch.device) -> CompileConfig:
    """transformers' auto-compile of the decoding forward (static cache only); CUDA graphs on a GPU, inductor's default
    mode on a CPU, where `generate()` compiles only when `_compile_all_devices` is set."""
    config = CompileConfig(fullgraph=True, mode="reduce-overhead" if device.type == "cuda" else "default")
    if device.type != "cuda":
        config._compile_all_devices = True
    return config


def ar_call(model, task: Task, indices: list[int], **kwargs):
    ids, mask = task.batch(indices)
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=task.canvas, do_sample=False, eos_token_id=task.ar_stop,
        pad_token_id=task.pad, use_cache=True, **kwargs,
    )  # fmt: skip
    new = out[:, ids.shape[1] :]
    padded = torch.full((len(indices), task.canvas), task.pad)  # stopped early at EOS: pad to the canvas
    padded[:, : new.shape[1]] = new
    return padded, new.shape[1]


def demo_task(n: int) -> tuple[Task, LLaDAModelLM, object]:
    model, tokenizer = load_demo_model()
    _, held_out = split_pairs()
    rng = random.Random(0)  # the phrasing draw of scripts/train_demo_model.py's held-out evaluation
    questions = [(rng.choice(PHRASINGS).format(a=a, b=b), arithmetic_answer(a, b)) for a, b in held_out][:n]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        for q, _ in questions
    ]  # fmt: skip
    expected = [a for _, a in questions]

    def check(indices, answers):
        return [tokenizer.decode(row, skip_special_tokens=True).strip() == expected[i] for i, row in
                zip(indices, answers)]  # fmt: skip

    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    task = Task("demo", prompts, check, canvas=16, pad=EOS_DEMO, ar_stop=[eot, EOS_DEMO])
    return task, model, tokenizer


def clock_task(test_size: int, walk: ClockWalk) -> Task:
    prompts, answers = walk.sample(test_size, torch.Generator().manual_seed(10_000))
    n = walk.path_length

    def check(indices, outputs):
        return [bool((row[:n] == answers[i, :n]).all()) for i, row in zip(indices, outputs)]

    return Task("clock", prompts.tolist(), check, canvas=walk.answer_length, pad=EOS, ar_stop=[EOS])


# ---------------------------------------------------------------------------------------------------------------------
# Measurement


COMPILED_MDM = ("MDM 1 tok/step", "MDM threshold 0.9")  # compiled twins of these eager variants (CPU: ~1-4 min each)
AR_EAGER, AR_COMPILED = "AR twin, generate() dynamic cache", "AR twin, generate() static cache + compile"
COMPILED = ", compiled"


def mdm_variants(canvas: int, compiled: bool = False) -> dict[str, dict]:
    variants = {"MDM 1 tok/step": dict(steps=canvas), "MDM 1 tok/step (A/A)": dict(steps=canvas)}
    for k in (2, 3, 4, 8):
        if canvas % k == 0:
            variants[f"MDM k={k}"] = dict(steps=canvas // k)
    variants["MDM threshold 0.9"] = dict(threshold=0.9)
    variants["MDM threshold 0.9 + dual cache"] = dict(threshold=0.9, cache="dual")
    if compiled:
        variants.update({name + COMPILED: {**variants[name], "compile": True} for name in COMPILED_MDM})
    return variants


def variant_calls(task: Task, mdm, ar, compiled: bool) -> dict[str, partial]:
    """name -> call(indices) -> (answers, forwards per call), MDM variants first, then the AR twin's."""
    calls = {name: partial(mdm_call, mdm, task, **kw) for name, kw in mdm_variants(task.canvas, compiled).items()}
    calls[AR_EAGER] = partial(ar_call, ar, task)
    if compiled:
        calls[AR_COMPILED] = partial(ar_call, ar, task, cache_implementation="static",
                                     compile_config=ar_compile_config(ar.device))  # fmt: skip
    return calls


def eager_twin(name: str) -> str | None:
    """The eager variant a compiled one must agree with (same tokens), else None."""
    if name == AR_COMPILED:
        return AR_EAGER
    return name.removesuffix(COMPILED) if name.endswith(COMPILED) else None


def answers_and_accuracy(call, task: Task, n: int, batch: int = 100) -> tuple[torch.Tensor, float]:
    correct, answers = 0, []
    for start in range(0, n, batch):
        indices = list(range(start, min(n, start + batch)))
        out, _ = call(indices)
        answers.append(out)
        correct += sum(task.check(indices, out))
    return torch.cat(answers), correct / n


def measure_task(task: Task, mdm, ar, args) -> dict:
    compiled = not args.no_compile
    if compiled:  # a fresh cache per task; a hit recompile limit must fail, not fall back to eager silently
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = 64
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        torch._dynamo.utils.counters.clear()
    calls = variant_calls(task, mdm, ar, compiled)
    n_test = len(task.prompts)
    timed = list(range(min(args.timed, n_test)))
    cells = {}
    for batch in args.batch:
        chunks = [timed[i : i + batch] for i in range(0, len(timed), batch)]
        for name, call in calls.items():
            cells[(name, batch)] = (call, chunks)
    forwards, warmup = {}, {}
    for (name, batch), (call, chunks) in cells.items():  # warm-up (compiles); forwards per answer from these calls
        start = time.perf_counter()
        nfe = [call(chunk)[1] for chunk in chunks]
        warmup[(name, batch)] = time.perf_counter() - start
        forwards[(name, batch)] = statistics.fmean(nfe)
        print(f"  {task.name}: warm-up {name} B={batch}: {warmup[(name, batch)]:.1f} s", flush=True)
    rows, answers = {}, {}
    for name, call in calls.items():
        start = time.perf_counter()
        answers[name], acc = answers_and_accuracy(call, task, n_test)
        rows[name] = {"variant": name, "accuracy": acc, "accuracy_s": round(time.perf_counter() - start, 2)}
        if eager_twin(name):
            rows[name]["same_answers_as_eager"] = float((answers[name] == answers[eager_twin(name)]).all(1).float()
                                                        .mean())  # fmt: skip
    times = {key: [] for key in cells}
    gc.disable()
    try:
        for rep in range(args.reps):
            keys = list(cells)
            keys = keys[rep % len(keys) :] + keys[: rep % len(keys)]
            for key in keys:
                call, chunks = cells[key]
                start = time.perf_counter()
                for chunk in chunks:
                    call(chunk)
                times[key].append((time.perf_counter() - start) / len(timed))
    finally:
        gc.enable()
    for (name, batch), samples in times.items():
        ref = times[("MDM 1 tok/step", batch)]
        ratios = [r / t for r, t in zip(ref, samples)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        rows[name][f"B{batch}"] = {
            "ms_per_answer": 1000 * statistics.median(samples),
            "forwards_per_call": forwards[(name, batch)],
            "speedup_vs_ref": statistics.median(ratios),
            "speedup_iqr": q[2] - q[0],
            "warmup_s": warmup[(name, batch)],
        }
        if eager_twin(name):
            rows[name][f"B{batch}"]["compile_s"] = warmup[(name, batch)] - statistics.median(samples) * len(timed)
    aa = {b: rows["MDM 1 tok/step (A/A)"][f"B{b}"] for b in args.batch}
    noisy = any(abs(v["speedup_vs_ref"] - 1) > 0.03 or v["speedup_iqr"] > 0.05 for v in aa.values())
    result = {"task": task.name, "test_size": n_test, "timed_questions": len(timed), "canvas": task.canvas,
              "rows": list(rows.values()), "aa_check": {b: (v["speedup_vs_ref"], v["speedup_iqr"]) for b, v in
                                                         aa.items()}, "noise_flag": noisy}  # fmt: skip
    if compiled:  # a warm on-disk inductor cache (an earlier run's graphs) makes compile_s far shorter than cold
        inductor = torch._dynamo.utils.counters["inductor"]
        result["inductor_fx_cache"] = {k: inductor[k] for k in ("fxgraph_cache_hit", "fxgraph_cache_miss")}
    batch = 1 if 1 in args.batch else args.batch[0]
    result["claim"] = claim(result["rows"], batch)
    if compiled:
        result["claim_vs_fastest_ar"] = claim(result["rows"], batch, fastest_ar=True)
    return result


def claim(rows: list[dict], batch: int, fastest_ar: bool = False) -> dict:
    """Fastest MDM variant within 1 point of the best accuracy (any variant), against the AR twin at `batch`: its
    first variant (the dynamic cache), or its fastest one."""
    key = f"B{batch}"
    best = max(r["accuracy"] for r in rows)
    ars = [r for r in rows if r["variant"].startswith("AR")]
    ar = min(ars, key=lambda r: r[key]["ms_per_answer"]) if fastest_ar else ars[0]
    eligible = [r for r in rows if r["variant"].startswith("MDM") and r["accuracy"] >= best - 0.01 and key in r]
    out = {"batch": batch, "best_accuracy": best, "ar_variant": ar["variant"], "ar_accuracy": ar["accuracy"],
           "ar_within_1_point": ar["accuracy"] >= best - 0.01}  # fmt: skip
    if not eligible:
        out["mdm_variant"] = None
        return out
    fastest = min(eligible, key=lambda r: r[key]["ms_per_answer"])
    out.update(mdm_variant=fastest["variant"], mdm_accuracy=fastest["accuracy"],
               mdm_ms=fastest[key]["ms_per_answer"], ar_ms=ar[key]["ms_per_answer"],
               ar_over_mdm=ar[key]["ms_per_answer"] / fastest[key]["ms_per_answer"])  # fmt: skip
    return out


def render(results: dict) -> str:
    lines = []
    for res in results["tasks"]:
        batches = [k for k in res["rows"][0] if k.startswith("B")]
        header = "| variant | accuracy (%) | " + " | ".join(
            f"fwd/call {b} | ms/answer {b} | × vs 1 tok/step {b} (IQR)" for b in batches
        )
        lines += [f"\n{res['task']} ({res['test_size']} test questions, {res['timed_questions']} timed, canvas "
                  f"{res['canvas']})\n", header + " |", "|" + "---|" * (2 + 3 * len(batches))]  # fmt: skip
        for r in res["rows"]:
            cells = " | ".join(
                f"{r[b]['forwards_per_call']:.2f} | {r[b]['ms_per_answer']:.2f} | "
                f"{r[b]['speedup_vs_ref']:.2f} ({r[b]['speedup_iqr']:.2f})"
                for b in batches
            )
            lines.append(f"| {r['variant']} | {100 * r['accuracy']:.1f} | {cells} |")
        for r in res["rows"]:
            if eager_twin(r["variant"]):
                compile_s = ", ".join(f"{b} {r[b]['compile_s']:.1f} s" for b in batches)
                lines.append(f"{r['variant']}: compile (warm-up minus one timed pass) {compile_s}; same answers as "
                             f"eager {100 * r['same_answers_as_eager']:.1f} %")  # fmt: skip
        aa = ", ".join(f"B{b}: {m:.2f} (IQR {q:.2f})" for b, (m, q) in res["aa_check"].items())
        lines.append(f"\nA/A (ref/ref median ratio): {aa}; noisy: {res['noise_flag']}")
        for c in [res["claim"]] + ([res["claim_vs_fastest_ar"]] if "claim_vs_fastest_ar" in res else []):
            if c.get("mdm_variant"):
                lines.append(
                    f"Claim (B={c['batch']}): {c['mdm_variant']} ({100 * c['mdm_accuracy']:.1f} %, "
                    f"{c['mdm_ms']:.2f} ms) vs {c['ar_variant']} ({100 * c['ar_accuracy']:.1f} %, {c['ar_ms']:.2f} "
                    f"ms): AR ms / MDM ms = {c['ar_over_mdm']:.2f}"
                    + ("" if c["ar_within_1_point"] else " (AR not within 1 point)")
                )
            else:
                lines.append("Claim: no MDM variant within 1 point of the best accuracy")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, res in zip(axes[0], tasks):
        shown = [r for r in res["rows"] if "(A/A)" not in r["variant"] and "B1" in r]
        for r in shown:
            ar, compiled = r["variant"].startswith("AR"), eager_twin(r["variant"]) is not None
            marker = {(True, False): "s", (True, True): "D", (False, False): "o", (False, True): "^"}[(ar, compiled)]
            x, y = r["B1"]["ms_per_answer"], 100 * r["accuracy"]
            ax.plot([x], [y], marker, markersize=7, label=r["variant"].replace("generate() ", ""))
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("ms per answer, B=1 (CPU, 1 thread; log scale)")
        ax.set_ylabel("exact match (%)")
        ax.set_title(f"{res['task']}: accuracy vs time per answer", fontsize=10)
        ax.margins(x=0.15, y=0.1)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="demo,clock")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timed", type=int, default=16, help="questions in each timed cell")
    parser.add_argument("--test-size", type=int, default=500, help="clock-walk test walks (demo: all 300 pairs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--demo-steps", type=int, default=DEMO_BUDGET["steps"], help="AR twin budget (demo)")
    parser.add_argument("--clock-steps", type=int, default=CLOCK_BUDGET["steps"])
    parser.add_argument("--cache-dir", default=str(ROOT / "bench" / "results" / "cache"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--train-only", action="store_true", help="train (or load) the twins and stop")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variants (~1-4 min each on CPU)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: tiny budgets, few questions, no compile")
    args = parser.parse_args(argv)
    if args.quick:
        args.demo_steps, args.clock_steps, args.reps, args.timed, args.test_size = 20, 20, 2, 2, 8
        args.batch, args.no_compile = [1, 2], True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cache_dir = Path(args.cache_dir)
    command = "python bench/bench_answers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command, "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
               "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
               "tasks": [], "training": {}}  # fmt: skip
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for name in names:
        if name == "demo":
            n = 8 if args.quick else 300
            task, mdm, tokenizer = demo_task(n)
            budget = {**DEMO_BUDGET, "steps": args.demo_steps}
            ar, record = demo_twin(budget, cache_dir, tokenizer)
            results["training"]["demo"] = {"mdm": "llada_hf/assets/demo/training.json (8000 x 64, lr 1e-3)",
                                           "ar": record}  # fmt: skip
        elif name == "clock":
            budget = {**CLOCK_BUDGET, "steps": args.clock_steps}
            mdm, ar, records, walk = clock_models(budget, cache_dir)
            task = clock_task(args.test_size, walk)
            results["training"]["clock"] = records
        else:
            raise SystemExit(f"unknown task {name!r}: use demo or clock")
        print(f"{name}: twins ready ({json.dumps(results['training'][name], default=str)})", flush=True)
        if args.train_only:
            continue
        results["tasks"].append(measure_task(task, mdm, ar, args))
        out = Path(args.out)  # written after every task: a long run keeps what it measured
        out.mkdir(parents=True, exist_ok=True)
        (out / "answers_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.train_only:
        return 0
    plot(results, out / "answers_cpu.png")
    print(render(results))
    print(f"wrote {out}/answers_cpu.{{json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
