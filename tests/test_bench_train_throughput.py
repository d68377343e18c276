"""The throughput benchmark's comparison code runs end to end (speed is judged by hand, not in CI)."""
import json
import subprocess
import sys

import pytest

from tests.trainer_runs import REPO

pytestmark = pytest.mark.slow


def test_quick_mode_reports_every_variant_and_ratio():
    result = subprocess.run([sys.executable, "bench/train_throughput.py", "--quick"], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[:result.stdout.index("\n|")])
    quick = report["sizes"]["quick"]
    assert set(quick["tokens_per_second"]) == {"ours", "bare", "hf_trainer"}
    assert all(value > 0 for value in quick["tokens_per_second"].values())
    assert quick["ours_over_bare"] == pytest.approx(quick["runs"][0]["ours"] / quick["runs"][0]["bare"])
    assert "| quick (1 layers, hidden 32, 4×32) |" in result.stdout
