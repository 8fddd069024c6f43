#!/usr/bin/env bash
# One prepared GPU session. A device lease is ~15 min in all, so each stage has its own time cap and writes as it goes;
# the stages run in this order (STAGES picks a subset; install always runs):
#   install        llada_hf editable, no deps (wheels in .whl/ first, e.g. the transformers version CI uses)
#   pytest         pytest -m gpu                                              -> $OUT/pytest_gpu.log
#   compile_check  bench/gpu_compile_check.py: compiled vs eager tokens        -> $OUT/compile_check.log
#   b1             bench_generate, LLaDA-8B geometry, random bf16, B=1, eager + compiled -> $OUT/generate_cuda_b1.json
#   b8             bench_generate, B=8, eager variants                        -> $OUT/generate_cuda_b8.json
#   llada2         bench_llada2_cache on cuda, bf16                           -> $OUT/llada2_cache_cuda.json
# Usage (repository root, on a CUDA machine):  OUT=bench/results/gpu bash bench/gpu_checks.sh
#   e.g. STAGES="b1 b8" GEN=256 REPS=5 B1_S=400 bash bench/gpu_checks.sh
# Measured on an H200 (2026-11-26): install 25 s, pytest 95 s, a cold inductor compile of the 8B step ~125 s.
set -u
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GEN=${GEN:-128}
REPS=${REPS:-3}
STAGES=${STAGES:-pytest compile_check b1 b8 llada2}
B1_VARIANTS=${B1_VARIANTS:-REF k=1 (A/A),FAST k=1,DUAL k=1,DUAL k=4,FAST+compile k=1,AR dynamic,AR static+compile}
B8_VARIANTS=${B8_VARIANTS:-REF k=1 (A/A),FAST k=1,DUAL k=1,DUAL k=4,AR dynamic}
stage() { echo "=== $(date +%T) $*"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
quiet() { grep -v -e Warning -e W1126 -e warn; }

stage install
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi -L
python3 -c "import torch, transformers, llada_hf; print(torch.__version__, transformers.__version__)"

if want pytest; then
    stage pytest -m gpu
    timeout "${PYTEST_S:-150}" python3 -m pytest -m gpu -v -rs tests/test_contract.py tests/test_quant.py \
        tests/test_sharding.py 2>&1 | tee "$OUT/pytest_gpu.log" | grep -E "PASS|FAIL|SKIP|ERROR|passed|failed|Error"
fi
if want compile_check; then
    stage compiled vs eager tokens
    timeout "${CC_S:-240}" python3 bench/gpu_compile_check.py 2>&1 | quiet | tee "$OUT/compile_check.log" | tail -14
fi
if want b1; then
    stage generate B=1 eager + compiled
    timeout "${B1_S:-230}" python3 bench/bench_generate.py --device cuda --compile --batch 1 --gen "$GEN" \
        --reps "$REPS" --no-forward-fraction --out "$OUT" --tag _b1 --variants "$B1_VARIANTS" 2>&1 | quiet \
        | tee "$OUT/generate_b1.log" | tail -16
fi
if want b8; then
    stage generate B=8 eager
    timeout "${B8_S:-110}" python3 bench/bench_generate.py --device cuda --batch 8 --gen "$GEN" --reps "$REPS" \
        --no-forward-fraction --out "$OUT" --tag _b8 --variants "$B8_VARIANTS" 2>&1 | quiet \
        | tee "$OUT/generate_b8.log" | tail -12
fi
if want llada2; then
    stage llada2 cache
    timeout "${L2_S:-45}" python3 bench/bench_llada2_cache.py --device cuda --dtype bfloat16 --reps 5 \
        --json "$OUT/llada2_cache_cuda.json" 2>&1 | quiet | tee "$OUT/llada2_cache.log" | tail -8
fi
stage done
