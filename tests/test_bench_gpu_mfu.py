"""bench/gpu_mfu.py --quick: the measuring code (trainer steps timed through its logging, MFU from the model
FLOPs and a peak) runs on a tiny model on CPU, gradient checkpointing off and on for each loss implementation;
the real figures need a lent GPU. Without sequence parallelism --quick measures every variant in one process;
with it, each in a process group of its own, so the SP test measures one (checkpointing on: the recomputation
runs through the all-to-all; tests/test_sequence_parallel.py checks SP training with checkpointing itself)."""
import json
import subprocess
import sys

import pytest

from modules.flops import training_flops_per_token
from tests.trainer_runs import REPO

pytestmark = pytest.mark.slow


def test_quick_mode_reports_both_checkpointing_settings_per_loss_impl():
    result = subprocess.run([sys.executable, "bench/gpu_mfu.py", "--quick", "--peak-flops", "1e12", "--loss-impl", "full",
                             "auto"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.index("\n|")
    runs = json.loads(result.stdout[:table])
    assert [(r["loss_impl"], r["loss_impl_used"], r["gradient_checkpointing"]) for r in runs] == [
        ("full", "full", False), ("full", "full", True), ("auto", "chunked", False), ("auto", "chunked", True)]
    for r in runs:
        assert r["size"] == "quick" and r["tokens_per_second"] > 0 and r["peak_memory_gib"] > 0
        flops = training_flops_per_token(r["parameters"], 2, 64, 128)
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * flops / 1e12)
    assert result.stdout[table:].strip().splitlines()[0].startswith("| GPU | engine | attention | loss_impl |")
    assert {r["engine"] for r in runs} == {"deepspeed"}


def test_quick_mode_with_sequence_parallelism_reports_mfu_per_rank():
    result = subprocess.run([sys.executable, "bench/gpu_mfu.py", "--quick", "--peak-flops", "1e12",
                             "--sequence-parallel-size", "2", "--checkpointing", "on"], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout[:result.stdout.index("\n|")])
    assert [(r["loss_impl"], r["loss_impl_used"], r["gradient_checkpointing"]) for r in runs] == [
        ("auto", "chunked", True)]  # the default loss_impl, resolved on CPU
    for r in runs:
        assert r["sequence_parallel_size"] == 2 and r["seq"] == 128 and r["tokens_per_second"] > 0
        flops = training_flops_per_token(r["parameters"], 2, 64, 128)
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * flops / (2 * 1e12))  # two ranks share the tokens


def test_quick_mode_measures_the_fsdp2_engine():
    result = subprocess.run([sys.executable, "bench/gpu_mfu.py", "--quick", "--peak-flops", "1e12", "--loss-impl", "full",
                             "--engine", "fsdp2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout[:result.stdout.index("\n|")])
    assert [(r["engine"], r["gradient_checkpointing"]) for r in runs] == [("fsdp2", False), ("fsdp2", True)]
    assert all(r["tokens_per_second"] > 0 and r["peak_memory_gib"] > 0 for r in runs)
