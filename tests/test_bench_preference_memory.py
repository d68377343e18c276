"""bench/preference_memory.py --quick: the live and the precomputed reference measured in fresh processes, side by
side in the JSON and the table; the live reference holds a second copy of the weights."""
import json
import subprocess
import sys

import pytest

from tests.trainer_runs import REPO

pytestmark = pytest.mark.slow


def test_quick_mode_compares_live_and_precomputed_reference(tmp_path):
    out = tmp_path / "preference_memory.json"
    result = subprocess.run([sys.executable, "bench/preference_memory.py", "--quick", "--repeats", "1", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.index("\n| reference |")
    report = json.loads(result.stdout[:table])
    assert json.loads(out.read_text()) == report
    live, precomputed = report["results"]
    assert (live["reference"], precomputed["reference"]) == ("live", "precomputed")
    for row in (live, precomputed):
        assert row["peak_growth_bytes"] > row["model_bytes"] > 0 and row["tokens_per_second"] > 0
    assert report["memory_ratio"] == precomputed["peak_growth_bytes"] / live["peak_growth_bytes"]
    assert len(result.stdout[table:].strip().splitlines()) == 4
