"""The data-pipeline benchmarks run end to end in --quick mode (speed is judged by hand, not in CI)."""
import json
import subprocess
import sys

import pytest

from tests.forked_ranks import REPO, run_script

pytestmark = pytest.mark.slow


def run_quick(module: str, forked: bool = True) -> tuple[dict, str]:
    """`python -m <module> --quick`: forked (tests/forked_ranks.py), or a fresh interpreter for a bench whose
    multiprocessing pools start their own fork server."""
    if forked:
        result = run_script(f"-m {module}", ["--quick"])
    else:
        result = subprocess.run([sys.executable, "-m", module, "--quick"], cwd=REPO, capture_output=True, text=True,
                                timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[:result.stdout.index("\n|")]), result.stdout


def test_tokenize_cache_reports_throughput_and_open_time_for_two_sizes():
    report, stdout = run_quick("bench.tokenize_cache", forked=False)
    runs = report["runs"]
    small, large = sorted({r["megabytes"] for r in runs})
    assert large > 3 * small and {r["num_proc"] for r in runs} == {1, 2}
    assert all(r["tokens_per_second"] > 0 and 0 < r["open_seconds"] < 1 for r in runs)
    assert len({r["tokens"] for r in runs if r["megabytes"] == large}) == 1  # 1 or 2 processes: the same tokens
    assert report["machine"]["cores"] >= 1 and f"| {large} MB |" in stdout


def test_packing_reports_both_modes_on_the_same_steps():
    report, stdout = run_quick("bench.packing")
    padding, packing = report["padding"], report["packing"]
    assert padding["steps"] == packing["steps"] == 3
    assert packing["non_pad_fraction"] > 0.95 > padding["non_pad_fraction"]
    assert report["speedup"] == pytest.approx(packing["effective_tokens_per_second"]
                                              / padding["effective_tokens_per_second"], rel=1e-2)
    assert "packing / padding effective tokens/s" in stdout
