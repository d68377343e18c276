"""python -m bench.preference_memory --quick: the live and the precomputed reference measured in fresh processes, side by
side in the JSON and the table; the live reference holds a second copy of the weights."""
import json

import pytest

from tests.forked_ranks import run_quick

pytestmark = pytest.mark.slow


def test_quick_mode_compares_live_and_precomputed_reference(tmp_path):
    out = tmp_path / "preference_memory.json"
    report, table = run_quick("bench.preference_memory", ("--repeats", "1", "--out", str(out)), forked_child=False)
    assert json.loads(out.read_text()) == report
    live, precomputed = report["results"]
    assert (live["reference"], precomputed["reference"]) == ("live", "precomputed")
    for row in (live, precomputed):
        assert row["peak_growth_bytes"] > row["model_bytes"] > 0 and row["tokens_per_second"] > 0
    assert report["memory_ratio"] == precomputed["peak_growth_bytes"] / live["peak_growth_bytes"]
    assert table.strip().splitlines()[0].startswith("| reference |") and len(table.strip().splitlines()) == 4
