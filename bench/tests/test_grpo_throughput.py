"""python -m bench.grpo_throughput --quick: the GRPO bench measures steps, generation and completions/s consistently;
`--backend vllm` where vLLM cannot run (CPU) is refused in one line before anything is measured."""
import json
import os

import pytest
import torch

from bench.grpo_throughput import main
from tests.forked_ranks import run_script


@pytest.mark.slow  # a bench's --quick mode
def test_quick_bench_reports_consistent_figures(tmp_path):
    # on one OpenMP thread: on 2 cores shared with the other worker a second one spins
    result = run_script("-m bench.grpo_throughput", ["--quick", "--output", str(tmp_path / "grpo.json")],
                        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "grpo.json").read_text())
    assert figures["completions_per_step"] == 4 and figures["backend"] == "engine"
    assert 0 < figures["generation_s"] < figures["step_s"]
    assert figures["generation_share"] == figures["generation_s"] / figures["step_s"]
    assert figures["completions_per_s"] == 4 / figures["step_s"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal on a machine without CUDA")
def test_the_vllm_backend_is_refused_in_one_line_on_cpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--quick", "--backend", "engine", "vllm", "--output", str(tmp_path / "grpo.json")])
    assert stopped.value.code == 2 and not (tmp_path / "grpo.json").exists()
    assert capsys.readouterr().err.strip() == ("error: objective.generation_backend.name='vllm': vLLM runs on a CUDA "
                                               "GPU and none is visible here; use generation_backend.name=engine")
