"""Training throughput: our trainer vs a bare DeepSpeed loop vs transformers' Trainer (same DeepSpeed config), and
our trainer's two engines side by side at 2 ranks: DeepSpeed ZeRO-3 (`ours-zero3`) vs FSDP2 (`ours-fsdp2`).

Same random LLaMA, same random token batches, same steps (the 2-rank variants: the same per-rank batch, torchrun;
on a GPU machine they need 2 GPUs); tokens/s count every rank's tokens; peak memory is rank 0's (the CUDA
allocator's peak, or the process's resident high-water mark on CPU); torchrun gives each rank one CPU thread,
so compare the 2-rank variants with each other. Each measurement runs in its own process, the variants
alternate within every repetition, and the ratios are taken within a repetition (shared CPUs are noisy: only
ratios measured side by side count).

Each measurement is written to the `--output` JSON as soon as it is taken. A measurement whose process
crashed is recorded as an error and the others go on (the exit status is then 1); one that crashed at exit,
after reporting its number (the HF Trainer + DeepSpeed stack has aborted at interpreter exit), keeps the number
and notes the exit code.

    python -m bench.train_throughput             # both sizes, 3 repetitions (about 10 minutes on 2 cores)
    python -m bench.train_throughput --quick     # tiny and short: checks the comparison code (CI)
    python -m bench.train_throughput --variants ours,bare   # a subset of the variants
"""
import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import (PeakMemory, RandomTokens, add_fork_workers_argument, build_model_dir, emit_result,
                           results_of, run_worker_processes, timed_trainer)

SIZES = {  # name: (layers, hidden, heads, intermediate, batch, seq)
    "small": (2, 64, 4, 176, 8, 128),
    "large": (4, 256, 8, 688, 8, 512),
    "quick": (1, 32, 2, 64, 4, 32),
}
VARIANTS = ("ours", "bare", "hf_trainer", "ours-zero3", "ours-fsdp2")
ENGINES = {"ours-zero3": ("deepspeed@ds_cfg=zero3",), "ours-fsdp2": ("engine=fsdp2",)}  # launched on ENGINE_RANKS ranks
ENGINE_RANKS = 2
LEARNING_RATE = 1e-4


def ds_config(batch: int) -> dict:
    """The DeepSpeed config all three variants share (conf/deepspeed/zero1.yaml with the same values)."""
    import torch
    return {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
            "steps_per_print": 10**9,
            "zero_optimization": {"stage": 1, "contiguous_gradients": True, "overlap_comm": True,
                                  "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
            "optimizer": {"type": "AdamW", "params": {"lr": LEARNING_RATE, "weight_decay": 0.0,
                                                      "torch_adam": not torch.cuda.is_available()}}}


def measure_ours(model_dir: Path, size: str, warmup: int, steps: int, out: Path, engine: tuple[str, ...] = ()) -> float:
    """Our Trainer, composed from the demo config like `python trainer.py` does (plus the `engine` overrides);
    timed between the logs at the end of warm-up and at the end of the run (the logging collective is part of
    what is timed)."""
    _, _, _, _, batch, seq = SIZES[size]
    overrides = [f"model_name_or_path={model_dir}", f"output_dir={out}", "precision=fp32", "do_eval=false",
                 "evaluate_during_training=false", f"per_gpu_train_batch_size={batch}", f"max_steps={warmup + steps}",
                 f"logging_steps={warmup}", "save_steps=-1", f"learning_rate={LEARNING_RATE}", "weight_decay=0.0",
                 "warmup_proportion=0.0", "lr_scheduler=WarmupLR", "collator.pad_to_multiple_of=1", *engine]
    rows = batch * int(os.environ.get("WORLD_SIZE", 1)) * (warmup + steps)
    trainer, log_times = timed_trainer(overrides, RandomTokens(rows, seq))
    ctx = trainer.ctx
    trainer.train()
    return batch * ctx.world_size * seq * steps / (log_times[warmup + steps] - log_times[warmup])


def measure_bare(model_dir: Path, size: str, warmup: int, steps: int, out: Path) -> float:
    """initialize, forward, backward, step — nothing else."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM
    from general_util.dist import init_distributed
    _, _, _, _, batch, seq = SIZES[size]
    ctx = init_distributed()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config(batch))
    data = RandomTokens(batch * (warmup + steps), seq).ids.to(ctx.device)
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        ids = data[step * batch:(step + 1) * batch]
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch * seq * steps / (time.perf_counter() - start)


def measure_hf_trainer(model_dir: Path, size: str, warmup: int, steps: int, out: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments
    from general_util.dist import fill_single_process_env
    import deepspeed
    _, _, _, _, batch, seq = SIZES[size]
    fill_single_process_env()
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    step_times = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_times[state.global_step] = time.perf_counter()

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch, max_steps=warmup + steps,
                             learning_rate=LEARNING_RATE, weight_decay=0.0, lr_scheduler_type="constant",
                             logging_steps=10**6, save_strategy="no", report_to=[], deepspeed=ds_config(batch),
                             use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True)
    data = RandomTokens(batch * (warmup + steps), seq)
    collate = lambda rows: {"input_ids": torch.tensor([r["input_ids"] for r in rows]),  # noqa: E731
                            "labels": torch.tensor([r["labels"] for r in rows])}
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=data,
                      data_collator=collate, callbacks=[Clock()])
    trainer.train()
    return batch * seq * steps / (step_times[warmup + steps] - step_times[warmup])


def run_worker(args) -> None:
    from general_util.dist import exit_process
    out = Path(args.workdir) / f"{args.worker}-{time.time_ns()}"
    measure = {"ours": measure_ours, "bare": measure_bare, "hf_trainer": measure_hf_trainer,
               **{variant: functools.partial(measure_ours, engine=overrides) for variant, overrides in ENGINES.items()}}
    tokens_per_second = measure[args.worker](Path(args.model_dir), args.size, args.warmup, args.steps, out)
    if os.environ.get("RANK", "0") == "0":
        # the process's peak since it began (CPU: its resident set's high-water mark)
        emit_result({"tokens_per_second": tokens_per_second, "peak_memory_mib": PeakMemory().peak_bytes() / 2**20})
    exit_process(0)  # the number is out: skip the exit-time destructors that have aborted a finished process


def measurement(result: subprocess.CompletedProcess) -> dict:
    """A worker's outcome: {"tokens_per_second"} (plus "exit_code" when it crashed after reporting it) or
    {"error"} when it crashed before."""
    measured = results_of(result.stdout)
    if measured:
        value = measured[-1]
        return value if result.returncode == 0 else {**value, "exit_code": result.returncode}
    tail = " | ".join(result.stderr.strip().splitlines()[-3:])[-600:]
    return {"error": f"exit code {result.returncode} before a result: {tail}"}


def measure_in_subprocess(variant: str, size: str, model_dir: Path, workdir: Path, warmup: int, steps: int,
                          fork: bool) -> dict:
    args = ["--worker", variant, "--size", size, "--model-dir", str(model_dir), "--workdir", str(workdir),
            "--warmup", str(warmup), "--steps", str(steps)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        result = run_worker_processes("bench.train_throughput", args, ENGINE_RANKS if variant in ENGINES else 1, env, fork, 1800)
    except subprocess.TimeoutExpired:
        return {"error": "no result within 1800 s"}
    return measurement(result)


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(size: str, variants: list[str], runs: list[dict]) -> dict:
    """Medians over the repetitions that measured the variant(s); ratios only within a repetition (None where
    a side failed or was not run)."""
    def tps(run, variant):
        return run.get(variant, {}).get("tokens_per_second")

    def ratio(other, ours="ours"):
        return median_or_none([tps(r, ours) / tps(r, other) for r in runs if tps(r, ours) and tps(r, other)])

    layers, hidden, _, _, batch, seq = SIZES[size]
    return {"model": f"{layers} layers, hidden {hidden}", "batch": batch, "seq": seq,
            "tokens_per_second": {v: median_or_none([tps(r, v) for r in runs if tps(r, v)]) for v in variants},
            "peak_memory_mib": {v: median_or_none([r[v]["peak_memory_mib"] for r in runs
                                                   if "peak_memory_mib" in r.get(v, {})]) for v in variants},
            "ours_over_bare": ratio("bare"), "ours_over_hf_trainer": ratio("hf_trainer"),
            "fsdp2_over_zero3": ratio("ours-zero3", ours="ours-fsdp2"), "runs": runs}


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def cell(values: dict, key: str, digits: int) -> str:
    if key not in values:
        return "not run"
    return "failed" if values[key] is None else f"{values[key]:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps, one repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"which of {', '.join(VARIANTS)} to measure")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output", type=Path, default=Path("outputs/bench/train_throughput.json"),
                        help="JSON rewritten after every measurement (default: outputs/bench/train_throughput.json)")
    add_fork_workers_argument(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)
    sizes = ["quick"] if args.quick else args.sizes.split(",")
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    if not variants or set(args.variants.split(",")) - set(variants):
        parser.error(f"--variants: a comma-separated subset of {','.join(VARIANTS)}")
    repeats, warmup, steps = (1, 1, 2) if args.quick else (args.repeats, args.warmup, args.steps)
    results = {"sizes": {}, "repeats": repeats, "warmup_steps": warmup, "measured_steps": steps}
    # stdout carries the report alone: library messages (DeepSpeed logs to stdout) go to stderr
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        print(f"measurements go to {args.output.resolve()} as they are taken")
        for size in sizes:
            layers, hidden, heads, intermediate, _, seq = SIZES[size]
            model_dir = build_model_dir(Path(tmp) / f"model-{size}", 1024, max(seq, 128), hidden_size=hidden,
                                        num_layers=layers, num_heads=heads, intermediate_size=intermediate)
            runs = []
            for repeat in range(repeats):
                order = variants if repeat % 2 == 0 else variants[::-1]  # alternate who goes first
                runs.append({})
                for variant in order:
                    runs[-1][variant] = measure_in_subprocess(variant, size, model_dir, Path(tmp), warmup, steps,
                                                                     args.fork_workers)
                    results["sizes"][size] = summarise(size, variants, runs)
                    write_json_atomic(args.output, results)
    print(json.dumps(results, indent=2))
    print("\n| size | ours tok/s | bare tok/s | HF Trainer tok/s | ours/bare | ours/Trainer |\n|---|---|---|---|---|---|")
    for size, r in results["sizes"].items():
        t = r["tokens_per_second"]
        ratios = {f"ours_over_{v}": r[f"ours_over_{v}"] for v in ("bare", "hf_trainer") if {"ours", v} <= t.keys()}
        print(f"| {size} ({r['model']}, {r['batch']}×{r['seq']}) | {cell(t, 'ours', 0)} | {cell(t, 'bare', 0)} | "
              f"{cell(t, 'hf_trainer', 0)} | {cell(ratios, 'ours_over_bare', 3)} | "
              f"{cell(ratios, 'ours_over_hf_trainer', 3)} |")
    print(f"\n| size | ZeRO-3 ×{ENGINE_RANKS} tok/s | FSDP2 ×{ENGINE_RANKS} tok/s | FSDP2/ZeRO-3 | ZeRO-3 peak MiB | "
          "FSDP2 peak MiB |\n|---|---|---|---|---|---|")
    for size, r in results["sizes"].items():
        t, m = r["tokens_per_second"], r["peak_memory_mib"]
        ratio = {"fsdp2_over_zero3": r["fsdp2_over_zero3"]} if {"ours-zero3", "ours-fsdp2"} <= t.keys() else {}
        print(f"| {size} | {cell(t, 'ours-zero3', 0)} | {cell(t, 'ours-fsdp2', 0)} | {cell(ratio, 'fsdp2_over_zero3', 3)} | "
              f"{cell(m, 'ours-zero3', 0)} | {cell(m, 'ours-fsdp2', 0)} |")
    failed = [f"{size}/{variant}" for size, r in results["sizes"].items() for run in r["runs"]
              for variant, m in run.items() if "error" in m]
    if failed:
        print(f"failed measurements (recorded as errors): {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
