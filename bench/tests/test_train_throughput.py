"""The throughput benchmark's comparison code runs end to end (speed is judged by hand, not in CI), records each
measurement as it is taken, and loses only the variant whose process crashed. Its main runs in this process, its
workers forked from the warm fork server (--fork-workers; bench/tests/test_harness.py: the same as fresh ones)."""
import json
import math
import subprocess

import pytest

from bench.train_throughput import main, measurement
from devtools.bench_output import report_and_table
from tests.trainer_runs import child_env


def bench(tmp_path, capsys, monkeypatch, *args, env=None):
    """(a CompletedProcess with the exit code, stdout and stderr, the --output file) of `python
    bench/train_throughput.py --quick ...`, run in this process."""
    output = tmp_path / "results.json"
    for name, value in child_env(**(env or {})).items():
        monkeypatch.setenv(name, value)
    try:
        main(["--quick", "--fork-workers", "--output", str(output), *args])
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err), output


@pytest.mark.slow
def test_quick_mode_reports_every_variant_and_ratio(tmp_path, capsys, monkeypatch):
    result, output = bench(tmp_path, capsys, monkeypatch)
    assert result.returncode == 0, result.stderr[-3000:]
    report, _ = report_and_table(result.stdout)
    assert json.loads(output.read_text()) == report  # the file rewritten after each measurement ends as the report
    quick = report["sizes"]["quick"]
    run = quick["runs"][0]
    assert set(quick["tokens_per_second"]) == {"ours", "bare", "hf_trainer", "ours-zero3", "ours-fsdp2"}
    assert all(value > 0 for value in quick["tokens_per_second"].values())
    assert all(value > 0 for value in quick["peak_memory_mib"].values())  # ZeRO-3 vs FSDP2 at 2 ranks, side by side
    assert quick["fsdp2_over_zero3"] == pytest.approx(run["ours-fsdp2"]["tokens_per_second"]
                                                      / run["ours-zero3"]["tokens_per_second"])
    for other in ("bare", "hf_trainer"):  # the comparison the bench exists for, taken side by side
        ratio = quick[f"ours_over_{other}"]
        assert math.isfinite(ratio) and ratio > 0
        assert ratio == pytest.approx(run["ours"]["tokens_per_second"] / run[other]["tokens_per_second"])
    assert "| quick (1 layers, hidden 32, 4×32) |" in result.stdout


@pytest.mark.slow
def test_a_crashed_variant_loses_only_itself(tmp_path, capsys, monkeypatch):
    # only our trainer's loop calls the fault hook: the "ours" worker is SIGKILLed in the middle of its measurement;
    # the variant measured after it (the cheapest, the bare loop) still is
    result, output = bench(tmp_path, capsys, monkeypatch, "--variants", "ours,bare",
                           env={"LLAMA_TRAINER_FAULT": "kill@step=2"})
    assert result.returncode == 1 and "failed measurements (recorded as errors): quick/ours" in result.stderr
    quick = json.loads(output.read_text())["sizes"]["quick"]
    assert quick["runs"][0]["ours"]["error"].startswith("exit code -9 before a result")
    assert quick["tokens_per_second"]["bare"] > 0 and set(quick["tokens_per_second"]) == {"ours", "bare"}
    assert quick["tokens_per_second"]["ours"] is None and quick["ours_over_bare"] is None
    assert "| quick (1 layers, hidden 32, 4×32) | failed | " in result.stdout and "| not run |" in result.stdout


def test_a_worker_that_aborts_after_its_result_keeps_the_number():
    aborted = subprocess.CompletedProcess([], -6, 'RESULT {"tokens_per_second": 1234.5}\n',
                                          "terminate called without an active exception\n")
    assert measurement(aborted) == {"tokens_per_second": 1234.5, "exit_code": -6}
    assert measurement(subprocess.CompletedProcess([], 0, 'RESULT {"tokens_per_second": 7.0}\n', "")) == \
        {"tokens_per_second": 7.0}
    crashed = measurement(subprocess.CompletedProcess([], 1, "", "Traceback ...\nRuntimeError: boom\n"))
    assert crashed == {"error": "exit code 1 before a result: Traceback ... | RuntimeError: boom"}
