"""`llada-hf serve` throughput and latency: batched at the diffusion step vs one request at a time, in one run.

For each server mode (`--max-batch-size B` and `--max-batch-size 1`) a server subprocess is started on the demo model
(127.0.0.1, a free port), warmed up, then `c` client threads (c = 1, 4, 16) send `--requests` chat requests in all
(demo questions with varied operands, so prompt lengths and left padding differ), each with the `openai` client.
Reported: requests/s (requests / wall time of the level) and p50/p95 latency per request.

    python bench/bench_serve.py --requests 64 --threads 1 --output bench/results/serve_cpu.json
"""

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(max_batch_size: int, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "llada_hf.cli", "serve", "--port", str(port)]
    process = subprocess.Popen([*command, "--max-batch-size", str(max_batch_size)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the server did not start") from None
            time.sleep(0.3)


def questions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    forms = ("What is {a} + {b}?", "Add {a} and {b}.", "What is {a} plus {b}?", "{a} + {b} = ?")
    return [rng.choice(forms).format(a=rng.randrange(100), b=rng.randrange(100)) for _ in range(count)]


def run_level(client: openai.OpenAI, prompts: list[str], clients: int) -> dict:
    def one(prompt: str) -> float:
        start = time.perf_counter()
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": prompt}])
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(one, prompts))
    wall = time.perf_counter() - start
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {"rps": len(prompts) / wall, "p50_s": statistics.median(latencies), "p95_s": p95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the batched server's --max-batch-size")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server (OMP_NUM_THREADS)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    results = []
    for batch in (args.max_batch_size, 1):
        process, port = start_server(batch, args.threads)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=600, max_retries=0)
            run_level(client, questions(8, seed=99), 4)  # warm-up
            for clients in args.clients:
                level = run_level(client, questions(args.requests, seed=clients), clients)
                results.append({"max_batch_size": batch, "clients": clients, **level})
                rps, p50, p95 = level["rps"], level["p50_s"] * 1000, level["p95_s"] * 1000
                line = f"max-batch-size {batch:>3}  clients {clients:>3}  {rps:7.2f} req/s  p50 {p50:7.0f} ms"
                print(f"{line}  p95 {p95:7.0f} ms", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)

    batched = f"batched (max-batch-size {args.max_batch_size})"
    print(f"\n| clients | {batched}: req/s, p50, p95 | one at a time: req/s, p50, p95 |")
    print("|---|---|---|")
    for clients in args.clients:
        a, b = (next(r for r in results if r["clients"] == clients and r["max_batch_size"] == m)
                for m in (args.max_batch_size, 1))  # fmt: skip
        cells = [f"{r['rps']:.1f}, {r['p50_s'] * 1000:.0f} ms, {r['p95_s'] * 1000:.0f} ms" for r in (a, b)]
        print(f"| {clients} | {cells[0]} | {cells[1]} |")
    if args.output:
        meta = {"platform": platform.platform(), "cpus": os.cpu_count(), "args": vars(args)}
        with open(args.output, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
