"""`python -m bench.eval_vs_lm_eval --quick`: ours, our lm-eval wrapper and lm-evaluation-harness score the same items
alike (speed is judged by hand, not in CI). Needs requirements-bench.txt (lm-eval)."""
import importlib.util
import os

import pytest

from tests.forked_ranks import run_quick

pytestmark = pytest.mark.slow


def test_quick_mode_agrees_with_lm_eval():
    if importlib.util.find_spec("lm_eval") is None and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
        pytest.skip("lm-eval absent: pip install -r requirements-bench.txt (CI installs it)")
    report, table = run_quick("bench.eval_vs_lm_eval")  # forked (tests/forked_ranks.py)
    assert report["mode"] == "quick" and set(report["suites"]) == {"logiqa", "c3_long"}
    logiqa, c3_long = report["suites"]["logiqa"], report["suites"]["c3_long"]
    assert logiqa["items"] == 4 and logiqa["options"] == 16 and logiqa["truncated_items"] == 0
    assert c3_long["items"] == 4 and c3_long["truncated_items"] == 4  # every long prompt is cut
    for suite in (logiqa, c3_long):  # lm-eval's truncation kept: the same scores and choices as lm-eval
        exact = suite["agreement"]["ours"]
        assert exact["max_abs_loglikelihood_difference"] <= 1e-4 and exact["identical_choices"] == 1.0
        assert suite["scores_agree"] and all(suite["speedup"][side] > 0 for side in ("ours", "ours_shared"))
    for suite in (logiqa, c3_long):  # the wrapped path (the lm_eval evaluator's LiveLM): lm-eval's numbers, timed
        wrapped = suite["agreement"]["ours_lm_eval"]
        assert suite["wrapped_agrees"] and wrapped["max_abs_loglikelihood_difference"] <= 1e-4
        assert wrapped["identical_choices"] == 1.0 and wrapped["metrics_identical"]
        assert all(suite["metrics"][task]["ours_lm_eval"] == suite["metrics"][task]["lm_eval"] for task in suite["metrics"])
        assert suite["items_per_second"]["ours_lm_eval"] > 0 and suite["speedup"]["ours_lm_eval"] > 0
    # the shared truncation only changes what a cut item's shorter options see; on short prompts nothing
    assert logiqa["agreement"]["ours_shared"]["max_abs_loglikelihood_difference"] <= 1e-4
    assert isinstance(report["goal_met"], bool)
    rows = table.strip().splitlines()
    assert rows[0].startswith("| suite | side | items/s |") and len(rows) == 2 + 2 * 4  # 4 sides per suite
    assert sum("| ours_lm_eval |" in row for row in rows) == 2
