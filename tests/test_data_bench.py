"""The data-pipeline benchmarks run end to end in --quick mode (speed is judged by hand, not in CI)."""
import pytest

from tests.forked_ranks import run_quick

pytestmark = pytest.mark.slow


def test_tokenize_cache_reports_throughput_open_time_and_peak_memory():
    report, table = run_quick("bench.tokenize_cache", ("--memory-gb", "0.001"), forked_child=False)
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
    assert report["machine"]["cores"] >= 1 and f"| {large} MB | jsonl |" in table and "| 0.001 GB |" in table


def test_packing_reports_both_modes_on_the_same_steps():
    report, table = run_quick("bench.packing")
    padding, packing = report["padding"], report["packing"]
    assert padding["steps"] == packing["steps"] == 3
    assert packing["non_pad_fraction"] > 0.95 > padding["non_pad_fraction"]
    assert report["speedup"] == pytest.approx(packing["effective_tokens_per_second"]
                                              / padding["effective_tokens_per_second"], rel=1e-2)
    assert "packing / padding effective tokens/s" in table
