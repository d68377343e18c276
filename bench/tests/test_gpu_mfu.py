"""python -m bench.gpu_mfu --quick: the measuring code (trainer steps timed through its logging, MFU from the model
FLOPs and a peak) runs on a tiny model on CPU, gradient checkpointing off and on for each loss implementation;
the real figures need a lent GPU. Without sequence parallelism --quick measures every variant in one process;
with it, each in a process group of its own, so the SP test measures one (checkpointing on: the recomputation
runs through the all-to-all; tests/test_sequence_parallel.py checks SP training with checkpointing itself)."""
import pytest

from bench.gpu_mfu import main
from devtools.bench_output import report_and_table
from modules.flops import training_flops_per_token

pytestmark = pytest.mark.slow


def quick_runs(capsys, monkeypatch, *args) -> tuple[list[dict], str]:
    """The runs and the table of `python -m bench.gpu_mfu --quick --peak-flops 1e12 <args>`, run in this process
    with its workers forked from the warm fork server (--fork-workers, bench/harness.py), on one OpenMP thread each
    (on 2 cores shared with the other worker a second one spins)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main(["--quick", "--peak-flops", "1e12", "--fork-workers", *args])
    return report_and_table(capsys.readouterr().out)


def test_quick_mode_reports_both_checkpointing_settings_per_loss_impl(capsys, monkeypatch):
    runs, table = quick_runs(capsys, monkeypatch, "--loss-impl", "full", "auto")
    assert [(r["loss_impl"], r["loss_impl_used"], r["gradient_checkpointing"]) for r in runs] == [
        ("full", "full", False), ("full", "full", True), ("auto", "chunked", False), ("auto", "chunked", True)]
    for r in runs:
        assert r["size"] == "quick" and r["tokens_per_second"] > 0 and r["peak_memory_gib"] > 0
        flops = training_flops_per_token(r["parameters"], 2, 64, 128)
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * flops / 1e12)
    assert table.strip().splitlines()[0].startswith("| GPU | engine | attention | loss_impl |")
    assert {r["engine"] for r in runs} == {"deepspeed"}


def test_quick_mode_with_sequence_parallelism_reports_mfu_per_rank(capsys, monkeypatch):
    runs, _ = quick_runs(capsys, monkeypatch, "--sequence-parallel-size", "2", "--checkpointing", "on")
    assert [(r["loss_impl"], r["loss_impl_used"], r["gradient_checkpointing"]) for r in runs] == [
        ("auto", "chunked", True)]  # the default loss_impl, resolved on CPU
    for r in runs:
        assert r["sequence_parallel_size"] == 2 and r["seq"] == 128 and r["tokens_per_second"] > 0
        flops = training_flops_per_token(r["parameters"], 2, 64, 128)
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * flops / (2 * 1e12))  # two ranks share the tokens


def test_quick_mode_measures_the_fsdp2_engine(capsys, monkeypatch):
    runs, _ = quick_runs(capsys, monkeypatch, "--loss-impl", "full", "--engine", "fsdp2")
    assert [(r["engine"], r["gradient_checkpointing"]) for r in runs] == [("fsdp2", False), ("fsdp2", True)]
    assert all(r["tokens_per_second"] > 0 and r["peak_memory_gib"] > 0 for r in runs)
