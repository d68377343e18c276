"""The packing benchmark runs end to end in --quick mode (speed is judged by hand, not in CI); the token cache's:
bench/tests/test_tokenize_cache.py."""
import pytest

from tests.forked_ranks import run_quick

pytestmark = pytest.mark.slow


def test_packing_reports_both_modes_on_the_same_steps():
    report, table = run_quick("bench.packing")
    padding, packing = report["padding"], report["packing"]
    assert padding["steps"] == packing["steps"] == 3
    assert packing["non_pad_fraction"] > 0.95 > padding["non_pad_fraction"]
    assert report["speedup"] == pytest.approx(packing["effective_tokens_per_second"]
                                              / padding["effective_tokens_per_second"], rel=1e-2)
    assert "packing / padding effective tokens/s" in table
