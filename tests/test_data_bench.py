"""The data-pipeline benchmarks run end to end in --quick mode (speed is judged by hand, not in CI)."""
import json
import subprocess
import sys

import pytest

from tests.forked_ranks import REPO, run_script

pytestmark = pytest.mark.slow


def run_quick(module: str, forked: bool = True, extra: tuple[str, ...] = ()) -> tuple[dict, str]:
    """`python -m <module> --quick [extra]`: forked (tests/forked_ranks.py), or a fresh interpreter for a bench
    whose multiprocessing pools start their own fork server."""
    if forked:
        result = run_script(f"-m {module}", ["--quick", *extra])
    else:
        result = subprocess.run([sys.executable, "-m", module, "--quick", *extra], cwd=REPO, capture_output=True, text=True,
                                timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[:result.stdout.index("\n|")]), result.stdout


def test_tokenize_cache_reports_throughput_open_time_and_peak_memory():
    report, stdout = run_quick("bench.tokenize_cache", forked=False, extra=("--memory-gb", "0.001"))
    runs = report["runs"]
    jsonl = [r for r in runs if r["format"] == "jsonl"]
    small, large = sorted({r["megabytes"] for r in jsonl})
    assert large > 3 * small and {(r["ranks"], r["num_proc"]) for r in jsonl} == {(1, 1), (1, 2), (2, 1)}
    assert all(r["tokens_per_second"] > 0 and 0 < r["open_seconds"] < 1 for r in runs)
    for size in (small, large):  # 1 or 2 ranks, 1 or 2 tokenizer processes, JSON lines or Parquet: the same tokens
        corpus = [r for r in jsonl if r["megabytes"] == size]
        parquet = [r for r in runs if r["format"] == "parquet" and r["documents"] == corpus[0]["documents"]]
        assert len(parquet) == 1 and len({r["tokens"] for r in corpus + parquet}) == 1
    [memory] = report["memory"]
    assert memory["tokens"] > 0 and memory["peak_rss_mib"] >= memory["rss_before_mib"] > 0
    assert report["machine"]["cores"] >= 1 and f"| {large} MB | jsonl |" in stdout and "| 0.001 GB |" in stdout


def test_packing_reports_both_modes_on_the_same_steps():
    report, stdout = run_quick("bench.packing")
    padding, packing = report["padding"], report["packing"]
    assert padding["steps"] == packing["steps"] == 3
    assert packing["non_pad_fraction"] > 0.95 > padding["non_pad_fraction"]
    assert report["speedup"] == pytest.approx(packing["effective_tokens_per_second"]
                                              / padding["effective_tokens_per_second"], rel=1e-2)
    assert "packing / padding effective tokens/s" in stdout
