"""The longest sequence that trains within a per-rank memory budget, sequence_parallel_size 1 vs 2 (DeepSpeed
Ulysses, modules/sequence_parallel.py), and tokens/s at a length both can run.

    python -m bench.long_context                    # the full search (about 20 minutes on 2 CPU cores)
    python -m bench.long_context --quick            # a smaller budget, coarse steps: checks the comparison (CI)
    python -m bench.long_context --log probes.jsonl # also append every probe to a file as it is measured

Every probe is a fresh process group (1 process, or 2 ranks under `torchrun`; --fork-workers: forked from a warm
fork server, bench/harness.py) running the trainer (demo sft config, ZeRO-1, fp32, sdpa, loss_impl=full: the logits
are part of what sequence parallelism splits; bench/loss_memory.py measures the chunked loss, which takes them out
of both sides) for --steps optimizer steps on one row of L random tokens, all of them trained. Its memory is the
growth of each rank's peak resident set (VmHWM, reset through /proc/self/clear_refs once the engine is built:
libraries and weights are in) over its resident set at that point: gradients, optimizer states, activations, logits
and the collectives' buffers; a length fits when every rank's growth is within --budget-mib. The longest fitting
length is found by doubling (halving while the first probe does not fit), then bisection down to the size's
granularity: SP=1 from the size's first length, SP=2 from the longest SP=1 fits (it fits there too, and both are
timed there). Each probe is printed to stderr as one JSON line the moment it is measured. Then both settings train
at the longest length SP=1 fits, timed between the trainer's logs after a warm-up step (the probes already taken at
that length serve when they ran --timed-steps steps: in --quick they do).
"""
import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import (PeakMemory, add_fork_workers_argument, build_model_dir, emit_result, results_of,
                           run_worker_processes)

SHAPE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 176}
SIZES = {  # name: (model shape, vocabulary, memory budget per rank in MiB, first length, granularity)
    "full": (SHAPE, 4096, 512, 1024, 256),
    # SP=1 fits 2048 (~145 MiB), not 4096; SP=2 fits 4096 (~155 MiB per rank), not 8192: 5 probes in all
    "quick": (SHAPE, 4096, 200, 2048, 4096),
}


def run_worker(model_dir: Path, size: str, sp: int, length: int, steps: int) -> None:
    """One probe on this rank; global rank 0 prints `RESULT {...}` with every rank's memory growth."""
    from bench.harness import RandomTokens, timed_trainer
    from general_util.dist import exit_process, gather_objects, teardown
    _, vocab, *_ = SIZES[size]
    overrides = [f"model_name_or_path={model_dir}", f"output_dir={model_dir.parent / 'out'}", "precision=fp32",
                 "do_eval=false", "evaluate_during_training=false", "per_gpu_train_batch_size=1",
                 f"max_steps={steps}", "logging_steps=1", "save_steps=-1", "torch_adam=true",
                 "collator.pad_to_multiple_of=1", f"sequence_parallel_size={sp}", "loss_impl=full"]
    trainer, log_times = timed_trainer(overrides, RandomTokens(steps, length, vocab=vocab))
    ctx = trainer.ctx
    memory = PeakMemory(cuda=False)
    memory.start()  # the libraries, the weights and the engine are in; the training steps are not
    trainer.train()
    growths = gather_objects(memory.growth_bytes())
    if ctx.is_main:
        seconds = log_times[steps] - log_times[1] if steps > 1 else None
        emit_result({"growth_mib": [g / 2**20 for g in growths],
                     "tokens_per_second": length * (steps - 1) / seconds if seconds else None})
    teardown(trainer.engine, trainer.close_data)  # then leave as trainer.py does: no exit-time abort of a rank
    exit_process(0)


def probe(model_dir: Path, size: str, sp: int, length: int, steps: int, fork: bool) -> dict:
    """A fresh process group of `sp` ranks trains at `length`; its per-rank memory growth (and tokens/s)."""
    args = ["--worker", str(model_dir), "--size", size, "--sp", str(sp), "--length", str(length), "--steps", str(steps)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    out = run_worker_processes("bench.long_context", args, sp, env, fork)
    measured = results_of(out.stdout)
    if out.returncode != 0 or not measured:
        raise SystemExit(f"probe sp={sp} length={length} failed:\n{out.stderr[-4000:]}")
    return {"sp": sp, "length": length, "steps": steps, **measured[-1],
            "wall_s": time.perf_counter() - started}


class Recorder:
    """Every measurement, in order: printed to stderr (and appended to `log`) the moment it is taken."""

    def __init__(self, log: Path | None):
        self.log, self.probes = log, []

    def __call__(self, measurement: dict) -> dict:
        self.probes.append(measurement)
        line = json.dumps(measurement)
        print(line, file=sys.stderr, flush=True)
        if self.log:
            with open(self.log, "a") as f:
                f.write(line + "\n")
        return measurement


def longest_fitting(measure, budget_mib: float, start: int, granularity: int) -> int:
    """The longest probed length within the budget, to `granularity` tokens: the search ends with a probe that
    does not fit at most `granularity` above it (0: nothing down to `granularity` fits). `measure(length)`
    returns the probe. Memory grows with length: from `start`, double while probes fit (halve while they do
    not), then bisect between the longest that fits and the shortest that does not, on multiples of
    `granularity`."""
    def fits(length: int) -> bool:
        return max(measure(length)["growth_mib"]) <= budget_mib

    def on_grid(length: int) -> int:
        return length // granularity * granularity

    if fits(start):
        good, bad = start, 2 * start
        while fits(bad):
            good, bad = bad, 2 * bad
    else:
        good, bad = on_grid(start // 2), start
        while good and not fits(good):
            good, bad = on_grid(good // 2), good
        if not good:
            return 0
    while bad - good > granularity:
        middle = good + max(granularity, on_grid((bad - good) // 2))
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model and budget (CI)")
    parser.add_argument("--budget-mib", type=float, help="per-rank memory budget (default: the size's)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per memory probe")
    parser.add_argument("--timed-steps", type=int, default=4, help="steps of the throughput runs (first is warm-up)")
    parser.add_argument("--log", type=Path, help="append every probe to this JSON-lines file as it is measured")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--sp", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    add_fork_workers_argument(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(Path(args.worker), args.size, args.sp, args.length, args.steps)
    size = "quick" if args.quick else "full"
    if args.quick:
        args.timed_steps = args.steps  # the memory probes' own timing
    shape, vocab, budget, start, granularity = SIZES[size]
    budget = args.budget_mib or budget
    record = Recorder(args.log)
    # stdout carries the report alone: library messages go to stderr
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", vocab, 1 << 20, **shape)
        longest = {}
        measure = functools.partial(probe, model_dir, size, fork=args.fork_workers)
        for sp in (1, 2):  # SP=2 starts at SP=1's longest: it fits that too, and both are timed there
            longest[sp] = longest_fitting(lambda length: record(measure(sp, length, args.steps)),
                                          budget, longest.get(1) or start, granularity)
        common = longest[1]
        timed = {sp: next((p for p in record.probes if (p["sp"], p["length"]) == (sp, common)
                           and p["steps"] >= args.timed_steps), None)
                     or record(measure(sp, common, args.timed_steps)) for sp in (1, 2)} if common else {}
    import platform
    report = {"size": size, "model": {**shape, "vocab_size": vocab}, "budget_mib_per_rank": budget,
              "granularity": granularity, "machine": f"{platform.processor() or platform.machine()}, "
                                                      f"{os.cpu_count()} CPUs",
              "longest": {f"sp{sp}": n for sp, n in longest.items()},
              "ratio": longest[2] / longest[1] if longest[1] else None,
              "throughput_length": common,
              "tokens_per_second": {f"sp{sp}": r["tokens_per_second"] for sp, r in timed.items()},
              "growth_mib_at_throughput_length": {f"sp{sp}": r["growth_mib"] for sp, r in timed.items()},
              "probes": record.probes}
    print(json.dumps(report, indent=2))
    print(f"\n| sequence_parallel_size | longest length within {budget:.0f} MiB per rank | tokens/s at {common} | "
          f"peak growth per rank at {common} |\n|---|---|---|---|")
    for sp in (1, 2):
        growth = ", ".join(f"{g:.0f}" for g in timed[sp]["growth_mib"]) if timed else "n/a"
        tokens = f"{timed[sp]['tokens_per_second']:.0f}" if timed else "n/a"
        print(f"| {sp} | {longest[sp]} | {tokens} | {growth} MiB |")
    if report["ratio"]:
        print(f"\nSP=2 trains {report['ratio']:.2f}× the length SP=1 does within the same per-rank budget")


if __name__ == "__main__":
    main()
