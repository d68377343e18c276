"""The GPU acceptance of every feature that needs a lent GPU, one check after another, one JSON line each.

    bash bench/gpu_check.sh              # on a lent GPU (installs the carried wheels first, see the script)
    bash bench/gpu_check.sh --dry-run    # on CPU: every check's code path on the tiny model, fp32 (CI)

Each check runs in a process (group) of its own (`bench/harness.py`: a fresh interpreter on the GPU, forked from
the warm fork server in --dry-run), so that one that crashes or runs out of memory costs only itself, and
prints one line `{"check": name, "status": "pass" | "fail" | "skip", "reason": ..., "seconds": ..., figures}`.
A check whose library or hardware is missing (DeepSpeed, bitsandbytes, liger-kernel, a second GPU) is a
`skip` with the reason printed. The exit code is 1 when a check failed, else 0.

Checks (GPU: bf16 where the feature is about mixed precision; --dry-run: fp32 on CPU):
  train_zero1, train_zero3   the trainer's steps under DeepSpeed ZeRO-1 / ZeRO-3 (demo sft data, tiny model):
                             every logged loss finite and the last below the first
  train_fsdp2                the same under engine=fsdp2
  mfu_1b                     tokens/s and MFU of the ~1B LLaMA (bench/gpu_mfu.py's worker; gradient checkpointing
                             on, loss_impl auto; FSDP2 where DeepSpeed is absent); --dry-run: its quick size
  loss_chunked, loss_liger   one forward + backward with loss_impl chunked / liger against full on a 32k
                             vocabulary: loss and gradients agree (bf16 on GPU), and the step's peak memory growth
  qlora                      LoRA steps on 4-bit NF4 base weights (model.load_in_4bit, bitsandbytes); --dry-run:
                             the same LoRA run with 16/32-bit base weights (4-bit needs CUDA)
  sequence_parallel          Ulysses steps at sequence_parallel_size 2 (needs DeepSpeed and 2 devices: 2 CPU
                             ranks in --dry-run)
  evaluators                 the dev-loss and multiple-choice evaluators (demo configs) on the device agree with
                             the same evaluators on CPU (fp32)
  grpo_vllm                  GRPO steps on the tiny model with vLLM colocated (objective.generation_backend.name=vllm)
                             beside the engine's own generate (bench/grpo_throughput.py): both give completions;
                             needs CUDA and vLLM (requirements-vllm.txt), whose wheel is not carried (a skip otherwise)
"""
import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import (REPO, PeakMemory, build_model_dir, emit_result, results_of, run_worker_processes,
                           timed_trainer)

CHECKS = ("train_zero1", "train_zero3", "train_fsdp2", "mfu_1b", "loss_chunked", "loss_liger", "qlora",
          "sequence_parallel", "evaluators", "grpo_vllm")
TRAIN_STEPS = 8
TIMEOUT_S = {"mfu_1b": 300, "grpo_vllm": 300}  # seconds a check may take (the rest: DEFAULT_TIMEOUT_S)
DEFAULT_TIMEOUT_S = 180


def cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def why_skipped(check: str, dry_run: bool) -> str | None:
    """The reason `check` cannot run on this machine (None: it can)."""
    import torch
    needs_deepspeed = check in ("train_zero1", "train_zero3", "sequence_parallel")
    if needs_deepspeed and not installed("deepspeed"):
        return "DeepSpeed is not installed here (engine=deepspeed and Ulysses need it)"
    if check == "loss_liger":
        if not cuda():
            return "Liger-Kernel's Triton kernels need a CUDA GPU"
        if not installed("liger_kernel"):
            return "liger-kernel is not installed (requirements-liger.txt)"
    if check == "qlora" and not dry_run:
        if not cuda():
            return "4-bit weights need a CUDA GPU"
        if not installed("bitsandbytes"):
            return "bitsandbytes is not installed (its wheel does not fit the carried 64 MiB)"
    if check == "grpo_vllm":
        from training.vllm_generation import vllm_refusal
        refusal = vllm_refusal(load_in_4bit=False)
        if refusal and cuda() and not installed("vllm"):
            refusal += " (its CUDA wheel, ~320 MB, does not fit the 64 MiB of wheels carried to the GPU machine)"
        if refusal:
            return refusal
    if check == "sequence_parallel" and not dry_run and torch.cuda.device_count() < 2:
        return f"{torch.cuda.device_count()} GPU: Ulysses splits a sequence over 2 ranks, one GPU each"
    return None


# --- the workers: each runs in its own process (group) and reports with emit_result -------------------------

def train_overrides(check: str, output_dir: Path) -> list[str]:
    precision = "bf16" if cuda() else "fp32"
    overrides = [f"output_dir={output_dir}", f"precision={precision}", f"max_steps={TRAIN_STEPS}", "logging_steps=1",
                 "save_steps=-1", "do_eval=false", "evaluate_during_training=false", "report_to=[]"]
    return overrides + {
        "train_zero1": ["deepspeed@ds_cfg=zero1"],
        "train_zero3": ["deepspeed@ds_cfg=zero3"],
        "train_fsdp2": ["engine=fsdp2"],
        "qlora": (["engine=fsdp2"] if not installed("deepspeed") else []) + [
            "model.use_peft=true", f"model.load_in_4bit={str(cuda()).lower()}", "learning_rate=1e-2"],
        "sequence_parallel": ["sequence_parallel_size=2", "loss_impl=full"],
    }[check]


def train_worker(check: str, workdir: Path) -> dict | None:
    """A few trainer steps on the demo data; every logged loss finite and the last below the first."""
    from general_util.dist import exit_process, teardown
    from training.engine import engine_of
    logs: dict[int, dict] = {}
    trainer, _ = timed_trainer(train_overrides(check, workdir / "out"), None, logs)
    trainer.train()
    losses = [logs[step]["train/loss"] for step in sorted(logs)]
    result = {"engine": engine_of(trainer.cfg).name, "precision": trainer.cfg.precision, "losses": losses,
              "ok": len(losses) == TRAIN_STEPS and all(map(math.isfinite, losses)) and losses[-1] < losses[0]}
    main_rank = trainer.ctx.is_main
    teardown(trainer.engine, trainer.close_data)
    if main_rank:
        emit_result(result)
    exit_process(0)


def loss_worker(check: str) -> dict:
    """loss_impl `impl` against full: the same loss sum and gradients, and the step's peak memory growth."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from modules.loss import next_token_targets
    from modules.loss_impl import LossSettings, causal_lm_loss_sum
    impl = check.removeprefix("loss_")
    device = torch.device("cuda" if cuda() else "cpu")
    dtype = torch.bfloat16 if cuda() else torch.float32
    vocab, seq = (32000, 2048) if cuda() else (4096, 256)
    config = AutoConfig.from_pretrained(REPO / "models" / "tiny_llama")
    config.vocab_size, config.max_position_embeddings = vocab, seq
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).train()
    ids = torch.randint(0, vocab, (1, seq), device=device)
    targets = next_token_targets(ids.clone())
    outcome = {}
    for name in ("full", impl):
        memory = PeakMemory(device.type == "cuda")
        memory.start()
        loss = causal_lm_loss_sum(model, {"input_ids": ids}, targets, LossSettings(name, 256))
        loss.backward()
        outcome[name] = (loss.item(), [p.grad.float().clone() for p in model.parameters()], memory.growth_bytes())
        model.zero_grad(set_to_none=True)
    (full_loss, full_grads, full_peak), (loss, grads, peak) = outcome["full"], outcome[impl]
    grad_error = max(((g - f).norm() / f.norm().clamp_min(1e-12)).item() for g, f in zip(grads, full_grads))
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    return {"impl": impl, "dtype": str(dtype).removeprefix("torch."), "vocab": vocab, "seq": seq,
            "loss_relative_error": abs(loss - full_loss) / abs(full_loss), "grad_relative_error": grad_error,
            "peak_growth_mib": peak / 2**20, "full_peak_growth_mib": full_peak / 2**20,
            "ok": abs(loss - full_loss) / abs(full_loss) < tolerance and grad_error < tolerance}


def evaluators_worker(workdir: Path) -> dict:
    """The demo's dev-loss and multiple-choice evaluators, fp32, on this process's device (the driver runs this
    twice: on the GPU, and with CUDA hidden for the CPU reference)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from general_util.dist import current
    from modules.loss_impl import LossSettings
    from post_processors.run import run_evaluators
    overrides = [f"output_dir={workdir}", "precision=fp32", "do_eval=true"]
    with initialize_config_dir(str(REPO / "conf" / "demo"), version_base="1.3"):
        eval_cfg, sft_cfg = compose("eval", overrides=overrides), compose("sft", overrides=overrides)
    tokenizer = instantiate(eval_cfg.tokenizer)
    evaluators = {**instantiate(eval_cfg.evaluators), "dev_loss": instantiate(sft_cfg.evaluators.dev_loss)}
    device = current().device
    model = instantiate(eval_cfg.model, tokenizer=tokenizer).to(device).eval()
    return {"device": device.type,
            "metrics": run_evaluators(evaluators, model, tokenizer, workdir, device.type, LossSettings("full"))}


def metrics_agree(device: dict, reference: dict) -> bool:
    """The same metrics: an accuracy may differ by a near-tie item's choice, a loss only by kernel rounding."""
    return set(device) == set(reference) and all(
        abs(device[key] - value) <= (1e-3 * abs(value) if key.endswith("loss") else 0.05)
        for key, value in reference.items())


def grpo_vllm_worker() -> dict:
    """bench/grpo_throughput.py's measurement with each backend: 4 steps of 4 prompts × 8 completions of 32 tokens."""
    from bench.grpo_throughput import measure
    results = {backend: measure(4, 4, 8, 32, backend) for backend in ("engine", "vllm")}
    return {"results": results, "ok": all(math.isfinite(r["completions_per_s"]) and r["completions_per_s"] > 0
                                          for r in results.values())}


def worker(args) -> None:
    workdir = Path(args.workdir)
    if args.worker.startswith("train_") or args.worker in ("qlora", "sequence_parallel"):
        return train_worker(args.worker, workdir)
    if args.worker == "grpo_vllm":
        return emit_result(grpo_vllm_worker())
    emit_result(loss_worker(args.worker) if args.worker.startswith("loss_") else evaluators_worker(workdir))


# --- the driver: one process (group) per check, one JSON line each -------------------------------------------

def mfu_command(workdir: Path, dry_run: bool) -> tuple[list[str], int]:
    """bench/gpu_mfu.py's worker arguments for the ~1B LLaMA (its quick size in --dry-run), its model built here."""
    from bench.gpu_mfu import SIZES
    size = "quick" if dry_run else "1b"
    shape, seq, _, vocab = SIZES[size]
    model_dir = build_model_dir(workdir / f"model-{size}", vocab, seq, **shape)
    engine = "deepspeed" if installed("deepspeed") else "fsdp2"
    warmup, steps = (1, 2) if dry_run else (3, 9)
    args = ["--worker", str(model_dir), "--engine", engine, "--checkpointing", "on", "--loss-impl", "auto",
            "--warmup", str(warmup), "--steps", str(steps), "--seq", str(seq)]
    return args + (["--quick", "--peak-flops", "1e12"] if dry_run else []), 1


def run_check(check: str, workdir: Path, dry_run: bool, seconds_left: float) -> dict:
    """One check's line; its processes get at most its own timeout, and never more than `seconds_left`."""
    started = time.perf_counter()
    skipped = why_skipped(check, dry_run)
    if skipped:
        return {"check": check, "status": "skip", "reason": skipped}
    workdir.mkdir(parents=True)
    if check == "mfu_1b":
        module = "bench.gpu_mfu"
        args, nproc = mfu_command(workdir, dry_run)
    else:
        module, args = "bench.gpu_check", ["--worker", check, "--workdir", str(workdir)]
        nproc = 2 if check == "sequence_parallel" else 1
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    runs = [env] + ([{**env, "CUDA_VISIBLE_DEVICES": ""}] if check == "evaluators" and cuda() else [])
    results = []
    for run_env in runs:  # evaluators on a GPU: then again on CPU, the reference
        try:
            own = TIMEOUT_S.get(check, DEFAULT_TIMEOUT_S) * (3 if dry_run else 1)  # a shared CPU is slower
            out = run_worker_processes(module, args, nproc, run_env, fork=dry_run,
                                       timeout=max(1.0, min(own, seconds_left - (time.perf_counter() - started))))
        except subprocess.TimeoutExpired as expired:
            return {"check": check, "status": "fail", "reason": f"no result within {expired.timeout:.0f} s",
                    "seconds": round(time.perf_counter() - started, 1)}
        measured = results_of(out.stdout)
        if out.returncode != 0 or not measured:
            tail = " | ".join((out.stderr or "").strip().splitlines()[-3:])[-600:]
            return {"check": check, "status": "fail", "reason": f"exit {out.returncode}: {tail}",
                    "seconds": round(time.perf_counter() - started, 1)}
        results.append(measured[-1])
    result, seconds = results[0], round(time.perf_counter() - started, 1)
    if check == "mfu_1b":
        ok = result["tokens_per_second"] > 0 and result["mfu"] is not None
    elif check == "evaluators":
        reference = results[-1]["metrics"]  # the CPU run (the only one in --dry-run)
        ok = metrics_agree(result["metrics"], reference)
        result = {**result, "cpu_metrics": reference}
    else:
        ok = result.pop("ok")
    return {"check": check, "status": "pass" if ok else "fail", "seconds": seconds, **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU: every check's code path on the tiny model")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS), help="a subset, in this order")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all checks together, a check past it failing as timed out (default: 480 on "
                             "the GPU, under 8 minutes; 1800 in --dry-run, on a CPU that may be shared)")
    parser.add_argument("--worker", choices=CHECKS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.dry_run and not cuda():
        raise SystemExit("error: no CUDA GPU here; on CPU run `bash bench/gpu_check.sh --dry-run`")
    # stdout carries the check lines alone: whatever else this process and the fork server it starts write to
    # file descriptor 1 (DeepSpeed logs to stdout) goes to stderr
    sys.stdout.flush()
    report = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    if args.dry_run:
        from devtools.forked import use_warm_fork_server
        use_warm_fork_server()
    budget = args.budget_s or (1800 if args.dry_run else 480)
    failed, deadline = False, time.perf_counter() + budget
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for check in args.checks:
            line = run_check(check, Path(tmp) / check, args.dry_run, deadline - time.perf_counter())
            failed |= line["status"] == "fail"
            print(json.dumps(line), file=report, flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
