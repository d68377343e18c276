"""python -m bench.loss_memory --quick: full vs chunked in processes of their own on a 32k vocabulary; the measurements
land in the --out JSON as they are taken, and chunked's peak growth is below full's, which holds the logits."""
import json

import pytest

from bench.loss_memory import main

pytestmark = pytest.mark.slow


def test_quick_mode_compares_full_and_chunked(tmp_path, capsys, monkeypatch):
    out = tmp_path / "loss_memory.json"
    # in this process, each variant forked from the warm fork server (bench/harness.py) on one OpenMP thread: on 2
    # cores shared with the other worker a second one spins (the peaks are the same; full's is 386 MiB either way)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main(["--quick", "--repeats", "1", "--out", str(out), "--fork-workers"])
    stdout = capsys.readouterr().out
    table = stdout.index("\n| vocab |")
    report = json.loads(stdout[:table])
    assert json.loads(out.read_text()) == report  # the last incremental write holds every measurement
    assert [(r["vocab"], r["seq"], r["loss_impl"]) for r in report["results"]] == [
        (32000, 1024, "full"), (32000, 1024, "chunked")]
    for row in report["comparisons"]:
        full, chunked = row["full"], row["chunked"]
        assert full["peak_growth_bytes"] >= row["seq"] * row["vocab"] * 4  # the fp32 logits are seen
        assert chunked["peak_growth_bytes"] < full["peak_growth_bytes"]
        assert row["memory_ratio"] == chunked["peak_growth_bytes"] / full["peak_growth_bytes"]
        assert full["tokens_per_second"] > 0 and chunked["tokens_per_second"] > 0
    assert len(stdout[table:].strip().splitlines()) == 2 + len(report["comparisons"])
