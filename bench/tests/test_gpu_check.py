"""`bash bench/gpu_check.sh --dry-run`: every GPU check's code path runs on CPU on the tiny model and prints one
JSON line; what needs CUDA (Liger's kernels, vLLM) is a skip with its reason, everything else passes here."""
import json
import os
import subprocess

import pytest

from bench.gpu_check import CHECKS, metrics_agree
from bench.harness import REPO

pytestmark = pytest.mark.slow


def test_dry_run_prints_one_line_per_check_and_passes_what_cpu_can_run():
    # one OpenMP thread per process: on 2 cores shared with the other worker a second one spins (38 -> 20 s of CPU)
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["check"] for line in lines] == list(CHECKS), result.stderr[-3000:]
    status = {line["check"]: line for line in lines}
    needs_cuda = ("loss_liger", "grpo_vllm")
    for name in needs_cuda:
        assert status[name]["status"] == "skip" and "CUDA" in status[name]["reason"], status[name]
    failed = {name: line for name, line in status.items() if name not in needs_cuda and line["status"] != "pass"}
    assert not failed, failed
    assert result.returncode == 0
    for name in ("train_zero1", "train_zero3", "train_fsdp2", "qlora", "sequence_parallel"):
        losses = status[name]["losses"]
        assert len(losses) == 8 and losses[-1] < losses[0]
    assert status["train_fsdp2"]["engine"] == "fsdp2" and status["train_zero3"]["engine"] == "deepspeed"
    assert status["loss_chunked"]["loss_relative_error"] < 1e-4
    assert status["mfu_1b"]["size"] == "quick" and status["mfu_1b"]["tokens_per_second"] > 0
    assert status["evaluators"]["metrics"] == status["evaluators"]["cpu_metrics"]
    assert {"dev_loss/loss", "logiqa_v2_zh/acc"} <= status["evaluators"]["metrics"].keys()


def test_the_evaluator_comparison_allows_a_near_tie_not_a_different_loss():
    reference = {"mc/acc": 0.5, "dev_loss/loss": 2.0}
    assert metrics_agree({"mc/acc": 0.5, "dev_loss/loss": 2.0005}, reference)
    assert metrics_agree({"mc/acc": 0.54, "dev_loss/loss": 2.0}, reference)
    assert not metrics_agree({"mc/acc": 0.5, "dev_loss/loss": 2.01}, reference)
    assert not metrics_agree({"mc/acc": 0.6, "dev_loss/loss": 2.0}, reference)
    assert not metrics_agree({"mc/acc": 0.5}, reference)
