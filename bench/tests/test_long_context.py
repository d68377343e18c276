"""python -m bench.long_context --quick: the memory-budget search (fresh process groups, per-rank peak growth, doubling)
runs for SP=1 and SP=2 on CPU, and SP=2 reaches about twice the length within the same per-rank budget."""
import json

import pytest

from bench.long_context import longest_fitting, main
from devtools.bench_output import report_and_table


@pytest.mark.parametrize("start", [256, 1024, 1280, 4096, 65536])
@pytest.mark.parametrize("limit", [0, 300, 1024, 1500, 5000, 20000])
def test_search_ends_at_a_fitting_probe_next_to_one_that_does_not(start, limit):
    """Whether the start fits or not, the answer is the longest probe that fits (0: none), a probe at most
    `granularity` above it does not, and no length is probed twice; memory here is 1 MiB per token on rank 0."""
    probes, granularity = [], 256

    def measure(length):
        probes.append(length)
        return {"growth_mib": [length, length / 2]}

    longest = longest_fitting(measure, limit, start, granularity)
    assert longest == max([n for n in probes if n <= limit], default=0)
    assert any(longest < n <= longest + granularity for n in probes if n > limit)
    assert limit - granularity < longest <= limit
    assert len(probes) == len(set(probes))


@pytest.mark.slow
def test_quick_search_finds_sp2_trains_longer_sequences(tmp_path, capsys):
    log = tmp_path / "probes.jsonl"
    main(["--quick", "--fork-workers", "--log", str(log)])  # in this process, the probes forked (bench/harness.py)
    report, table = report_and_table(capsys.readouterr().out)
    # every probe was recorded as it was taken, and the report is built from them
    assert [json.loads(line) for line in log.read_text().splitlines()] == report["probes"]
    budget = report["budget_mib_per_rank"]
    for sp in (1, 2):
        probes = [p for p in report["probes"] if p["sp"] == sp]
        assert all(len(p["growth_mib"]) == sp for p in probes)
        longest = report["longest"][f"sp{sp}"]
        assert longest == max(p["length"] for p in probes if max(p["growth_mib"]) <= budget)
        assert any(longest < p["length"] <= longest + report["granularity"] and max(p["growth_mib"]) > budget
                   for p in probes)  # the search ended next to a length that does not fit
    assert report["ratio"] >= 1.8
    assert all(report["tokens_per_second"][f"sp{sp}"] > 0 for sp in (1, 2))
    assert table.strip().splitlines()[0].startswith("| sequence_parallel_size |")
