"""python -m bench.tokenize_cache --quick runs end to end (speed is judged by hand, not in CI): every build's figures,
the same tokens whatever the ranks, tokenizer processes and format, and a peak-RSS build."""
import pytest

from bench.tokenize_cache import main
from devtools.bench_output import report_and_table

pytestmark = pytest.mark.slow


def test_tokenize_cache_reports_throughput_open_time_and_peak_memory(capsys):
    main(["--quick", "--memory-gb", "0.001", "--fork-workers"])  # in this process, the builds forked (bench/harness.py)
    report, table = report_and_table(capsys.readouterr().out)
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
