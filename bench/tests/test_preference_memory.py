"""python -m bench.preference_memory --quick: the live and the precomputed reference measured in processes of their own,
side by side in the JSON and the table; the live reference holds a second copy of the weights."""
import json

import pytest

from bench.preference_memory import main
from devtools.bench_output import report_and_table

pytestmark = pytest.mark.slow


def test_quick_mode_compares_live_and_precomputed_reference(tmp_path, capsys, monkeypatch):
    out = tmp_path / "preference_memory.json"
    # in this process, each variant forked from the warm fork server (bench/harness.py) on one OpenMP thread (on 2
    # cores shared with the other worker a second one spins)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main(["--quick", "--repeats", "1", "--out", str(out), "--fork-workers"])
    report, table = report_and_table(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    live, precomputed = report["results"]
    assert (live["reference"], precomputed["reference"]) == ("live", "precomputed")
    for row in (live, precomputed):
        assert row["peak_growth_bytes"] > row["model_bytes"] > 0 and row["tokens_per_second"] > 0
    assert report["memory_ratio"] == precomputed["peak_growth_bytes"] / live["peak_growth_bytes"]
    assert table.strip().splitlines()[0].startswith("| reference |") and len(table.strip().splitlines()) == 4
