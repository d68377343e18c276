"""Peak memory and speed of one training step (forward + backward) with loss_impl full vs chunked, for
vocabularies of 32k / 64k / 128k at sequence lengths 2048 and 4096, on the tiny-depth LLaMA: the config of
models/tiny_llama (2 layers, hidden size 64) with the vocabulary changed, random weights, nothing downloaded.
One sequence per step, every position labelled; fp32 on CPU, bf16 on CUDA.

    python -m bench.loss_memory [--out loss_memory.json] [--repeats 3] [--chunk-tokens 1024]
    python -m bench.loss_memory --quick      # vocab 32k at seq 1024, 256-token slices (CI smoke test)

Each (vocab, seq, loss_impl) runs in a fresh process of its own, so the peaks are independent (--fork-workers,
the smoke test's way: a process forked from the warm fork server, bench/harness.py). Measured:
- peak growth: how far the step pushes memory above what the process held just before it (the model's
  weights and the inputs), i.e. the step's activations, logits and gradients at their peak. CUDA: the
  allocator's max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() before.
  CPU (Linux): the kernel's resident-set high-water mark (VmHWM in /proc/self/status, reset just before
  the step by writing 5 to /proc/self/clear_refs) minus the resident set before the step: pages the step
  actually touched, not allocator bookkeeping. torch's CPU allocator caches nothing, and the worker runs
  with MALLOC_MMAP_THRESHOLD_=65536 (a forked worker: the same through mallopt), so glibc hands every freed
  block of 64 KiB or more back at once (memory freed earlier cannot hide in the baseline). The measured step follows one warm-up step, so
  one-time library set-up is not counted.
- tokens/s: tokens of a step / the fastest of `--repeats` further steps in the same process (the least
  disturbed by other load on a shared machine).
Every measurement is written to the --out JSON file as soon as it is taken, so a crashed variant loses
only itself (it is recorded with its error). Goal (issue 15): chunked's peak growth ≤ 1/3 of full's at
≥ 0.95 × its tokens/s.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from bench.harness import REPO, PeakMemory, add_fork_workers_argument, emit_result, results_of, run_worker_processes

FULL_GRID = {"vocab": [32000, 64000, 128256], "seq": [2048, 4096], "chunk_tokens": 1024}
QUICK_GRID = {"vocab": [32000], "seq": [1024], "chunk_tokens": 256}  # one comparison: two fresh processes
IMPLS = ("full", "chunked")
MMAP_THRESHOLD = 1 << 16  # glibc: every block ≥ 64 KiB is mmapped and handed back when freed (a fixed threshold)
M_MMAP_THRESHOLD = -3  # mallopt's parameter for it (malloc.h)


def fix_mmap_threshold() -> None:
    """What MALLOC_MMAP_THRESHOLD_ does for a fresh process, for one forked from a server whose glibc read its
    environment long ago: a fixed threshold of MMAP_THRESHOLD (no dynamic raising)."""
    import ctypes
    if not ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed")


def run_worker(vocab: int, seq: int, impl: str, chunk_tokens: int, repeats: int) -> dict:
    fix_mmap_threshold()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from modules.loss import next_token_targets
    from modules.loss_impl import LossSettings, causal_lm_loss_sum
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = AutoConfig.from_pretrained(REPO / "models" / "tiny_llama")
    config.vocab_size, config.max_position_embeddings = vocab, seq
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32).to(device).train()
    loss = LossSettings(impl, chunk_tokens)
    input_ids = torch.randint(0, vocab, (1, seq), device=device)
    inputs, labels = {"input_ids": input_ids}, input_ids.clone()

    def step() -> None:
        causal_lm_loss_sum(model, inputs, next_token_targets(labels), loss).backward()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up: one-time library set-up (kernels, thread pools) is not the loss's memory
    memory = PeakMemory(cuda)
    memory.start()
    step()
    growth = memory.growth_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"vocab": vocab, "seq": seq, "loss_impl": impl, "chunk_tokens": chunk_tokens,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "peak_growth_bytes": growth, "tokens_per_second": seq / min(times),
            "device": device_name()}


def device_name() -> str:
    import platform

    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def measure(vocab: int, seq: int, impl: str, chunk_tokens: int, repeats: int, fork: bool = False) -> dict:
    """One variant in a process of its own (fresh, or forked: `fork`); its error (crash, out of memory) is recorded
    instead of its figures."""
    args = ["--worker", f"{vocab},{seq},{impl}", "--chunk-tokens", str(chunk_tokens), "--repeats", str(repeats)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    out = run_worker_processes("bench.loss_memory", args, 1, env, fork)
    measured = results_of(out.stdout)
    if out.returncode != 0 or not measured:
        tail = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        return {"vocab": vocab, "seq": seq, "loss_impl": impl, "error": f"exit {out.returncode}: {tail}"}
    return measured[-1]


def comparisons(results: list[dict]) -> list[dict]:
    """Per (vocab, seq): chunked's peak growth and tokens/s relative to full's."""
    rows = []
    by_key = {(r["vocab"], r["seq"], r["loss_impl"]): r for r in results}
    for vocab, seq in dict.fromkeys((r["vocab"], r["seq"]) for r in results):
        full, chunked = by_key.get((vocab, seq, "full"), {}), by_key.get((vocab, seq, "chunked"), {})
        row = {"vocab": vocab, "seq": seq, "full": full, "chunked": chunked}
        if "peak_growth_bytes" in full and "peak_growth_bytes" in chunked:
            row["memory_ratio"] = chunked["peak_growth_bytes"] / full["peak_growth_bytes"]
            row["speed_ratio"] = chunked["tokens_per_second"] / full["tokens_per_second"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def mib(r):
        return f"{r['peak_growth_bytes'] / 2**20:.0f} MiB" if "peak_growth_bytes" in r else r.get("error", "n/a")

    def tps(r):
        return f"{r['tokens_per_second']:.0f}" if "tokens_per_second" in r else "n/a"

    lines = ["| vocab | seq | full: peak growth | chunked: peak growth | chunked / full | full tok/s | chunked tok/s "
             "| chunked / full speed |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratios = (f"{row['memory_ratio']:.2f}", f"{row['speed_ratio']:.2f}") if "memory_ratio" in row else ("n/a", "n/a")
        lines.append(f"| {row['vocab']} | {row['seq']} | {mib(row['full'])} | {mib(row['chunked'])} | {ratios[0]} | "
                     f"{tps(row['full'])} | {tps(row['chunked'])} | {ratios[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("loss_memory.json"), help="JSON written after every variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant after the measured one")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="loss_chunk_tokens (default: 1024, quick 256)")
    parser.add_argument("--quick", action="store_true", help="small vocabularies and sequence (CI)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    add_fork_workers_argument(parser)
    args = parser.parse_args(argv)
    grid = QUICK_GRID if args.quick else FULL_GRID
    chunk_tokens = args.chunk_tokens or grid["chunk_tokens"]
    if args.worker:
        vocab, seq, impl = args.worker.split(",")
        emit_result(run_worker(int(vocab), int(seq), impl, chunk_tokens, args.repeats))
        return
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("bench.loss_memory measures CPU memory through /proc (Linux) or on a CUDA GPU")
    results = []
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the report alone
        for vocab in grid["vocab"]:
            for seq in grid["seq"]:
                for impl in IMPLS:
                    results.append(measure(vocab, seq, impl, chunk_tokens, args.repeats, args.fork_workers))
                    print(f"measured {results[-1]}")
                    args.out.write_text(json.dumps({"results": results, "comparisons": comparisons(results)}, indent=2))
    report = {"results": results, "comparisons": comparisons(results)}
    print(json.dumps(report, indent=2))
    print()
    print(table(report["comparisons"]))


if __name__ == "__main__":
    main()
