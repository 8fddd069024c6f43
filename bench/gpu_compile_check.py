"""Does `generate(compile=...)` on a GPU give the eager tokens, and if not, is it semantics or float rounding?

Prints as it goes (a device lease is short), cheapest evidence first:

1. decision margins (eager): at every greedy decision of the golden cases, the gap between the last committed
   column's confidence and the best column left masked. A gap below the confidence change that a different kernel
   makes (step 2) means any fused kernel may legitimately pick another column;
2. one forward of the first case's starting canvas, eager vs inductor-compiled: max |Δ logit|, max |Δ confidence|;
3. per golden case (tests/fixtures/golden_tiny, fp32): eager vs the official CPU tokens; the compiled step through
   `aot_eager` (dynamo + AOT autograd, eager kernels: same graph, same arithmetic) and through inductor (its own fused
   kernels) vs eager. aot_eager = eager and inductor != eager points at rounding in inductor's kernels, not at the
   compiled step's semantics.

    python bench/gpu_compile_check.py     # on CUDA ~2-3 min (inductor compiles once per sampler configuration);
                                          # without CUDA it runs on the CPU (a dry run of the script)
"""

import json
from pathlib import Path

import torch
from llada_hf.generation import generation_parts
from llada_hf.generation.generation_llada import DiffusionSampler
from transformers import AutoModel

import llada_hf  # noqa: F401  (registers the Auto classes)

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "golden_tiny"


def run_cases(model, cases, device: str, compiled_step=None) -> dict:
    """Tokens per golden case; `compiled_step` replaces the model's compiled step (None = eager)."""
    if compiled_step is not None:
        model._llada_compiled_steps = {True: compiled_step}
    out = {}
    try:
        for case in cases["generate"]:
            kwargs = dict(case["kwargs"])
            kwargs["max_new_tokens"] = kwargs.pop("gen_length")
            torch.manual_seed(case["seed"] or 0)
            prompt = torch.tensor(case["prompt"], device=device)
            out[case["name"]] = model.generate(prompt, compile=compiled_step is not None, **kwargs).cpu()
    finally:
        model.__dict__.pop("_llada_compiled_steps", None)
    return out


def decision_margins(model, cases, device: str) -> list[float]:
    """Eager greedy cases: per `select_topk` call with an int k, the k-th minus the (k+1)-th finite confidence."""
    gaps, original = [], generation_parts.select_topk

    def recording(confidence, k, k_max=None):
        if isinstance(k, int) and k > 0:
            for row in confidence.float():
                ranked = row[row > -torch.inf].sort(descending=True).values
                if ranked.numel() > k:
                    gaps.append((ranked[k - 1] - ranked[k]).item())
        return original(confidence, k, k_max)

    generation_parts.select_topk = recording
    try:
        greedy = {**cases, "generate": [c for c in cases["generate"] if c["seed"] is None]}
        run_cases(model, greedy, device)
    finally:
        generation_parts.select_topk = original
    return gaps


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = json.loads((GOLDEN / "cases.json").read_text())
    model = AutoModel.from_pretrained(GOLDEN).eval().to(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{torch.__version__} {name}; fp32 matmul precision {torch.get_float32_matmul_precision()}", flush=True)

    gaps = sorted(decision_margins(model, cases, device))
    print(f"1. decision margins over {len(gaps)} greedy decisions: smallest {gaps[:3]}, "
          f"{sum(g < 1e-6 for g in gaps)} below 1e-6, median {gaps[len(gaps) // 2]:.3g}", flush=True)  # fmt: skip

    case = cases["generate"][0]
    prompt = torch.tensor(case["prompt"], device=device)
    blank = torch.full((prompt.shape[0], case["kwargs"]["gen_length"]), cases["mask_token_id"], device=device)
    canvas = torch.cat([prompt, blank], 1)
    with torch.no_grad():
        ref = model(canvas).logits.float()
        fused = torch.compile(model)(canvas).logits.float()
    conf_ref, conf_fused = (x.softmax(-1).amax(-1)[:, prompt.shape[1] :] for x in (ref, fused))
    print(f"2. one forward, inductor vs eager: max |Δ logit| {(ref - fused).abs().max().item():.3g}, "
          f"max |Δ confidence| "
          f"{(conf_ref - conf_fused).abs().max().item():.3g} (confidences {conf_ref.min().item():.4g}.."
          f"{conf_ref.max().item():.4g})", flush=True)  # fmt: skip

    golden = {c["name"]: torch.tensor(c["expected"]) for c in cases["generate"]}
    eager = run_cases(model, cases, device)
    print("3. | case | eager = official CPU tokens | aot_eager = eager | inductor = eager (positions differing) |")
    compiled = {}
    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        with torch._dynamo.config.patch(recompile_limit=64):  # as generate(): one graph per sampler configuration
            step = torch.compile(DiffusionSampler.step, fullgraph=True, dynamic=True, backend=backend)
            compiled[backend] = run_cases(model, cases, device, step)
        print(f"   {backend} done", flush=True)
    for case_name, tokens in eager.items():
        aot, ind = compiled["aot_eager"][case_name], compiled["inductor"][case_name]
        print(f"   | {case_name} | {torch.equal(tokens, golden[case_name])} | {torch.equal(aot, tokens)} | "
              f"{torch.equal(ind, tokens)} ({(ind != tokens).sum().item()} / {tokens.numel()}) |")  # fmt: skip


if __name__ == "__main__":
    main()
