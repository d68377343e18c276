"""Peak memory and tokens/s of DPO training steps with a live reference model (a frozen copy, forward each step)
vs reference log-probabilities precomputed before training (the rows carry them), side by side.

    python -m bench.preference_memory [--out preference_memory.json] [--pairs 4] [--seq 512] [--repeats 3]
    python -m bench.preference_memory --quick     # small sizes (CI smoke test)

The model: models/tiny_llama's config widened (hidden 256, 4 layers, vocabulary 32,000; --quick: hidden 64,
1 layer, vocabulary 4,000, 64 tokens), random weights, nothing downloaded; fp32 on CPU, bf16 on CUDA. A step: the DPO objective
(modules/preference.py, loss_impl chunked) on `pairs` random pairs of `seq` tokens (the second half of each row
scored), backward, AdamW step. Each variant runs in a fresh process (--fork-workers, the smoke test's way: a
process forked from the warm fork server, bench/harness.py). Measured (bench/harness.py's PeakMemory:
CUDA allocator peak, or the CPU resident-set high-water mark): peak growth from before the models are built, i.e.
weights (policy, and the reference copy when live), optimizer state and the step's activations; tokens/s: the
tokens of a step (both sides) / the fastest of --repeats steps after one warm-up step.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.harness import PeakMemory, add_fork_workers_argument, emit_result, results_of, run_worker_processes
from bench.loss_memory import MMAP_THRESHOLD, device_name, fix_mmap_threshold

REPO = Path(__file__).resolve().parents[1]

VARIANTS = ("live", "precomputed")
FULL = {"hidden": 256, "layers": 4, "vocab": 32000}
QUICK = {"hidden": 64, "layers": 1, "vocab": 4000}


def run_worker(variant: str, size: dict, pairs: int, seq: int, repeats: int) -> dict:
    fix_mmap_threshold()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from modules.loss_impl import LossSettings
    from modules.preference import DPO, pair_targets, reference_logps
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    config = AutoConfig.from_pretrained(REPO / "models" / "tiny_llama")
    config.hidden_size, config.num_hidden_layers, config.vocab_size = size["hidden"], size["layers"], size["vocab"]
    config.intermediate_size, config.max_position_embeddings = 4 * size["hidden"], seq
    torch.manual_seed(0)
    input_ids = torch.randint(3, size["vocab"], (2 * pairs, seq), device=device)
    labels = input_ids.clone()
    labels[:, : seq // 2] = -100
    batch = {"input_ids": input_ids, "labels": labels, "num_samples": torch.tensor(pairs)}
    settings = LossSettings("chunked", 1024)
    tracker = PeakMemory(cuda)
    tracker.start()
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).train()
    objective = DPO(beta=0.1)
    if variant == "live":
        reference = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval().requires_grad_(False)
        reference.load_state_dict(model.state_dict())
        objective.reference = lambda inputs, targets: reference_logps(reference, inputs, targets, settings)
    else:  # what the rows carry after the one pass before training
        with torch.no_grad():
            batch["ref_logps"] = reference_logps(model, {"input_ids": input_ids}, pair_targets(batch), settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        output = objective.loss(model, batch, settings, device)
        (output.loss_sums / objective.normalisers(batch).to(device)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up; the optimizer state exists from here on
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"reference": variant, **size, "pairs": pairs, "seq": seq,
            "dtype": str(dtype).removeprefix("torch."), "peak_growth_bytes": tracker.growth_bytes(),
            "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "tokens_per_second": 2 * pairs * seq / min(times), "device": device_name()}


def measure(variant: str, quick: bool, pairs: int, seq: int, repeats: int, fork: bool = False) -> dict:
    args = ["--worker", variant, "--pairs", str(pairs), "--seq", str(seq), "--repeats", str(repeats)] + (
        ["--quick"] if quick else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    out = run_worker_processes("bench.preference_memory", args, 1, env, fork)
    lines = results_of(out.stdout)
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        return {"reference": variant, "error": f"exit {out.returncode}: {tail}"}
    return lines[-1]


def table(results: list[dict]) -> str:
    lines = ["| reference | peak growth | tokens/s | model weights |", "|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['reference']} | {r['error']} | | |")
        else:
            lines.append(f"| {r['reference']} | {r['peak_growth_bytes'] / 2**20:.1f} MiB | {r['tokens_per_second']:.0f} | "
                         f"{r['model_bytes'] / 2**20:.1f} MiB |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="preference_memory.json")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    add_fork_workers_argument(parser)
    args = parser.parse_args(argv)
    if args.quick and "--seq" not in (argv or sys.argv):
        args.seq = 64
    if args.worker:
        size = QUICK if args.quick else FULL
        emit_result(run_worker(args.worker, size, args.pairs, args.seq, args.repeats))
        return
    results = []
    for variant in VARIANTS:
        results.append(measure(variant, args.quick, args.pairs, args.seq, args.repeats, args.fork_workers))
        Path(args.out).write_text(json.dumps({"results": results}, indent=1))
    report = {"results": results}
    live, pre = results
    if "peak_growth_bytes" in live and "peak_growth_bytes" in pre:
        report["memory_ratio"] = pre["peak_growth_bytes"] / live["peak_growth_bytes"]
        report["speed_ratio"] = pre["tokens_per_second"] / live["tokens_per_second"]
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
