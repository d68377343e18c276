"""python -m bench.loss_memory --quick: full vs chunked in fresh processes on a 32k vocabulary; the measurements
land in the --out JSON as they are taken, and chunked's peak growth is below full's, which holds the logits."""
import json
import subprocess
import sys

import pytest

from tests.trainer_runs import REPO

pytestmark = pytest.mark.slow


def test_quick_mode_compares_full_and_chunked(tmp_path):
    out = tmp_path / "loss_memory.json"
    result = subprocess.run([sys.executable, "-m", "bench.loss_memory", "--quick", "--repeats", "1", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.index("\n| vocab |")
    report = json.loads(result.stdout[:table])
    assert json.loads(out.read_text()) == report  # the last incremental write holds every measurement
    assert [(r["vocab"], r["seq"], r["loss_impl"]) for r in report["results"]] == [
        (32000, 1024, "full"), (32000, 1024, "chunked")]
    for row in report["comparisons"]:
        full, chunked = row["full"], row["chunked"]
        assert full["peak_growth_bytes"] >= row["seq"] * row["vocab"] * 4  # the fp32 logits are seen
        assert chunked["peak_growth_bytes"] < full["peak_growth_bytes"]
        assert row["memory_ratio"] == chunked["peak_growth_bytes"] / full["peak_growth_bytes"]
        assert full["tokens_per_second"] > 0 and chunked["tokens_per_second"] > 0
    assert len(result.stdout[table:].strip().splitlines()) == 2 + len(report["comparisons"])
