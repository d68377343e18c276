"""`bench/eval_vs_lm_eval.py --quick`: ours and lm-evaluation-harness score the same items alike (speed is
judged by hand, not in CI). Needs requirements-bench.txt (lm-eval)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.trainer_runs import REPO

pytestmark = pytest.mark.slow


def test_quick_mode_agrees_with_lm_eval():
    if importlib.util.find_spec("lm_eval") is None and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
        pytest.skip("lm-eval absent: pip install -r requirements-bench.txt (CI installs it)")
    result = subprocess.run([sys.executable, "bench/eval_vs_lm_eval.py", "--quick"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.index("\n|")
    report = json.loads(result.stdout[:table])
    assert report["mode"] == "quick" and report["items"] == 4 and report["options"] == 16
    assert report["max_abs_loglikelihood_difference"] <= 1e-4
    assert report["item_acc_identical"] and report["item_acc_norm_identical"] and report["metrics_identical"]
    assert report["scores_agree"]
    assert all(report["items_per_second"][side] > 0 for side in ("ours", "lm_eval"))
    assert report["speedup"] > 0 and isinstance(report["goal_met"], bool)
    assert result.stdout[table:].strip().splitlines()[0].startswith("| evaluator | items/s |")
