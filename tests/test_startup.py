"""What a trainer process pays before its first step, and what a forked rank must still see of its own."""
import errno
import subprocess
import sys

import pytest

from general_util import faults
from general_util.imports import deferred_torch_compile, hidden_modules
from tests.trainer_runs import REPO, child_env


def test_hidden_modules_raise_import_error_inside_the_block_only():
    sys.modules.pop("colorsys", None)
    with hidden_modules("colorsys", "json"):
        with pytest.raises(ImportError):
            import colorsys  # noqa: F401
        import json  # already imported before the block: untouched
        assert json.dumps([1]) == "[1]"
    import colorsys
    assert colorsys.rgb_to_hsv(1, 0, 0)[0] == 0


def test_deferred_torch_compile_compiles_on_first_call_with_the_options_given():
    import torch
    compile_now = torch.compile
    compiled_graphs = []

    def backend(graph, example_inputs):
        compiled_graphs.append(graph)
        return graph.forward

    with deferred_torch_compile():
        decorated = torch.compile(backend=backend)(lambda x: x * 2)  # @torch.compile(backend=...)
        direct = torch.compile(lambda x: x + 1, backend=backend)
    assert torch.compile is compile_now and compiled_graphs == []
    assert decorated(torch.ones(2)).tolist() == [2.0, 2.0] and len(compiled_graphs) == 1
    assert direct(torch.ones(2)).tolist() == [2.0, 2.0] and len(compiled_graphs) == 2
    direct(torch.ones(2))
    assert len(compiled_graphs) == 2  # compiled once


def test_trainer_start_up_imports_neither_mlflow_nor_matplotlib_nor_inductor(tmp_path):
    """DeepSpeed's autotuner imports MLflow (~2 s), the sweep summary matplotlib (~1 s), and DeepSpeed's Muon
    module, which ZeRO imports at initialize, TorchInductor for its @torch.compile kernels (~1 s): none is used
    by a training run (the MLflow tracker imports it when asked for, Muon compiles when configured). MLflow,
    hidden from DeepSpeed only, still imports afterwards: the MLflow tracker, made after DeepSpeed's import in the
    same process, logs a metric that its store reads back."""
    probe = ("import sys, trainer; from pathlib import Path; from training.deepspeed_engine import import_deepspeed; "
             "import_deepspeed(); assert 'deepspeed.runtime.zero.muon.muon_optimizer' in sys.modules; "
             "print(sorted(m for m in ('mlflow', 'matplotlib', 'torch._inductor.compile_fx') if m in sys.modules)); "
             "from general_util.trackers import MLflowTracker; "
             f"tracker = MLflowTracker(Path({str(tmp_path)!r}), {{'lr': 1}}, None, 0, {{}}); "
             "tracker.log({'train/loss': 2.5}, 1); tracker.close(); "
             "print([(m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, 'train/loss')])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-2:] == ["[]", "[(1, 2.5)]"]


def test_fault_is_read_when_it_fires(monkeypatch):
    """Not once at import: a rank forked from a process that imported general_util.faults has its own setting."""
    monkeypatch.delenv(faults.VARIABLE, raising=False)
    faults.fire("save", 3)  # unset: nothing
    monkeypatch.setenv(faults.VARIABLE, "enospc@save=3")
    faults.fire("save", 2)  # another point: nothing
    with pytest.raises(OSError) as raised:
        faults.fire("save", 3)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.setenv(faults.VARIABLE, "kill@stpe=3")
    with pytest.raises(ValueError, match="expected <kill|sigterm|enospc>@<step|save>=<step>"):
        faults.fire("step", 1)
