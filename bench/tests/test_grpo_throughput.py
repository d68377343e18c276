"""python -m bench.grpo_throughput --quick: the GRPO bench measures steps, generation and completions/s consistently."""
import json

import pytest

from tests.forked_ranks import run_script


@pytest.mark.slow  # a bench's --quick mode
def test_quick_bench_reports_consistent_figures(tmp_path):
    result = run_script("-m bench.grpo_throughput", ["--quick", "--output", str(tmp_path / "grpo.json")])
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "grpo.json").read_text())
    assert figures["completions_per_step"] == 4 and figures["backend"] == "hf_generate"
    assert 0 < figures["generation_s"] < figures["step_s"]
    assert figures["generation_share"] == figures["generation_s"] / figures["step_s"]
    assert figures["completions_per_s"] == 4 / figures["step_s"]
