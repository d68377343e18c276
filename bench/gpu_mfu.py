"""GPU throughput and MFU of our trainer on a ~1B-parameter LLaMA (random weights), bf16, seq 2048,
ZeRO-1 on one GPU, with gradient checkpointing off and on, for each --loss-impl (loss_impl; default
auto). Runs in well under 5 minutes on an H100 per loss implementation.

    python -m bench.gpu_mfu [--attn sdpa|flash_attention_2] [--steps 20] [--loss-impl full chunked liger]
    python -m bench.gpu_mfu --sequence-parallel-size 2 --seq 8192   # Ulysses over 2 GPUs (torchrun), one sequence group
    python -m bench.gpu_mfu --checkpointing on   # only one gradient checkpointing setting (default: off and on)
    python -m bench.gpu_mfu --engine fsdp2                          # the trainer's FSDP2 engine (engine=fsdp2) instead
    python -m bench.gpu_mfu --quick --peak-flops 1e12   # a tiny LLaMA, fp32 on CPU: checks the measuring code (CI)

Each variant runs in a fresh process (group; --fork-workers: forked from a warm fork server, bench/harness.py),
its peak memory taken from its start; --quick without sequence parallelism measures all of them in one process,
one after another (peaks reset at each start, so they include what an earlier variant left allocated: the CPU
figures there check the code, they are not for reading).

MFU = tokens/s × model FLOPs per token (6 × parameters + attention, modules/flops.py) / the GPU's
dense bf16 peak (table in modules/flops.py, or --peak-flops), per GPU: with --sequence-parallel-size N the
N ranks share every sequence, so the group's tokens/s is divided by N peaks.

On a machine without internet, carry the wheels: on a connected machine with the same Python,
`pip download -r requirements.txt -d wheels/ --platform manylinux2014_x86_64 --only-binary=:all:` plus
`pip wheel --no-deps deepspeed==0.19.8 -w wheels/` (DeepSpeed ships an sdist; its wheel builds ops
just in time), copy `wheels/` over and `pip install --no-index --find-links wheels/ -r requirements.txt`.
Keep the CUDA build of torch that the machine has (install the rest with `--no-deps` if pip would
replace it).
"""
import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.harness import (PeakMemory, add_fork_workers_argument, build_model_dir, emit_result, results_of,
                           run_worker_processes)
from general_util.dist import exit_process, teardown
from modules.loss_impl import LOSS_IMPLS

SIZES = {  # name: (model shape, sequence length, batch, vocabulary)
    "1b": ({"hidden_size": 2048, "num_layers": 16, "num_heads": 16, "intermediate_size": 5632}, 2048, 4, 32000),
    "quick": ({"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 176}, 128, 4, 1024),
}


def device_name() -> str:
    import platform

    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"


def run_worker(model_dir: Path, size: str, attn: str, checkpointing: bool, loss_impl: str, warmup: int, steps: int,
               peak: float | None, sp: int, seq: int, engine: str) -> dict | None:
    """One measurement on this rank; the result on global rank 0 (None on the others)."""
    memory = PeakMemory()
    memory.start()
    import torch
    from bench.harness import RandomTokens, timed_trainer
    from modules.flops import device_peak_flops, training_flops_per_token
    from modules.loss_impl import resolve
    shape, _, batch, vocab = SIZES[size]
    precision = "bf16" if torch.cuda.is_available() else "fp32"
    overrides = [f"model_name_or_path={model_dir}", f"output_dir={model_dir.parent / 'out'}", f"precision={precision}",
                 "do_eval=false", "evaluate_during_training=false", f"per_gpu_train_batch_size={batch}",
                 f"max_steps={warmup + steps}", f"logging_steps={warmup}", "save_steps=-1", f"engine={engine}",
                 f"model.attn_implementation={attn}", f"model.gradient_checkpointing={str(checkpointing).lower()}",
                 f"loss_impl={loss_impl}", "collator.pad_to_multiple_of=1", f"sequence_parallel_size={sp}"]
    overrides += ["torch_adam=true"] if engine == "deepspeed" else []  # FSDP2 always uses torch AdamW
    data = RandomTokens(batch * (warmup + steps), seq, vocab=vocab)
    trainer, log_times = timed_trainer(overrides, data)
    ctx = trainer.ctx
    trainer.train()
    tokens_per_second = batch * seq * steps / (log_times[warmup + steps] - log_times[warmup])
    flops_per_token = training_flops_per_token(trainer.active_params, shape["num_layers"], shape["hidden_size"], seq)
    peak = device_peak_flops(peak)
    result = {"size": size, "engine": engine, "precision": precision, "attn": attn,
              "gradient_checkpointing": checkpointing, "loss_impl": loss_impl,
              "loss_impl_used": resolve(trainer.engine.model, trainer.loss_settings, ctx.device),
              "sequence_parallel_size": sp, "seq": seq, "parameters": trainer.num_params,
              "tokens_per_second": tokens_per_second,
              "mfu": tokens_per_second * flops_per_token / (peak * sp) if peak else None,
              "peak_memory_gib": memory.peak_bytes() / 2**30, "gpu": device_name()}
    # the next variant of this worker reuses the process group (DeepSpeed caches groups made from it)
    teardown(trainer.engine, trainer.close_data, keep_process_group=True)
    return result if ctx.is_main else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-flops", type=float, default=None)
    parser.add_argument("--loss-impl", nargs="+", default=["auto"], choices=LOSS_IMPLS,
                        help="loss_impl values to measure, each with checkpointing off and on")
    parser.add_argument("--sequence-parallel-size", type=int, default=1,
                        help="N > 1: N ranks (torchrun, one GPU each) share every sequence (DeepSpeed Ulysses)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default: the size's)")
    parser.add_argument("--engine", default="deepspeed", choices=("deepspeed", "fsdp2"),
                        help="the trainer's engine: DeepSpeed ZeRO-1 or FSDP2 (fully sharded); FSDP2 has no Ulysses")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps (runs on CPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"],
                        help="gradient checkpointing settings to measure for each --loss-impl (default: both)")
    add_fork_workers_argument(parser)
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "1b"
    seq = args.seq or SIZES[size][1]
    if args.quick:
        args.warmup, args.steps = 1, 2
    if args.engine == "fsdp2" and args.sequence_parallel_size > 1:
        raise SystemExit("--sequence-parallel-size needs --engine deepspeed (DeepSpeed Ulysses)")
    if args.steps % args.warmup:
        raise SystemExit("--steps must be a multiple of --warmup (the trainer logs, hence times, every --warmup steps)")
    if args.worker:  # each of its variants in turn, peaks reset at the start of each
        for loss_impl, checkpointing in itertools.product(args.loss_impl, args.checkpointing):
            result = run_worker(Path(args.worker), size, args.attn, checkpointing == "on", loss_impl, args.warmup,
                                args.steps, args.peak_flops, args.sequence_parallel_size, seq, args.engine)
            if result is not None:
                emit_result(result)
        teardown()  # the process group the variants shared
        exit_process(0)  # no exit-time abort of a rank (general_util.dist.exit_process)
    results = []
    # stdout carries the report alone: library messages go to stderr
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:
        shape, _, _, vocab = SIZES[size]
        model_dir = build_model_dir(Path(tmp) / f"model-{size}", vocab, seq, **shape)
        variants = list(itertools.product(args.loss_impl, args.checkpointing))
        # A process each (clean peaks, nothing left over from another variant), except --quick without sequence
        # parallelism: one process measures them all (saves the start-ups; its peaks include what earlier variants
        # left allocated). Sequence parallelism needs a process each: its groups and attention are set up once.
        batches = [variants] if args.quick and args.sequence_parallel_size == 1 else [[v] for v in variants]
        for batch in batches:
            worker_args = ["--worker", str(model_dir), "--attn", args.attn,
                           "--loss-impl", *dict.fromkeys(impl for impl, _ in batch),
                           "--checkpointing", *dict.fromkeys(setting for _, setting in batch),
                           "--warmup", str(args.warmup), "--steps", str(args.steps), "--seq", str(seq),
                           "--sequence-parallel-size", str(args.sequence_parallel_size), "--engine", args.engine] \
                + (["--quick"] if args.quick else []) + (["--peak-flops", str(args.peak_flops)] if args.peak_flops else [])
            out = run_worker_processes("bench.gpu_mfu", worker_args, args.sequence_parallel_size,
                                       {**os.environ, "PYTHONUNBUFFERED": "1"}, args.fork_workers)
            measured = results_of(out.stdout)
            if out.returncode != 0 or len(measured) != len(batch):
                raise SystemExit(f"worker failed:\n{out.stderr[-4000:]}")
            results += measured
    print(json.dumps(results, indent=2))
    print("\n| GPU | engine | attention | loss_impl | seq | SP | grad. checkpointing | tokens/s | MFU | peak memory |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| {r['gpu']} | {r['engine']} | {r['attn']} | {r['loss_impl_used']} | {r['seq']} | {r['sequence_parallel_size']} | "
              f"{r['gradient_checkpointing']} | {r['tokens_per_second']:.0f} | {mfu} | {r['peak_memory_gib']:.1f} GiB |")


if __name__ == "__main__":
    main()
