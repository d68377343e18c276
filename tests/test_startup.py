"""What a trainer process pays before its first step, and what a forked rank must still see of its own."""
import errno
import subprocess
import sys

import pytest

from general_util import faults
from general_util.imports import hidden_modules
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


def test_trainer_start_up_imports_neither_mlflow_nor_matplotlib():
    """DeepSpeed's autotuner imports MLflow (~2 s) and the sweep summary matplotlib (~1 s): neither is used by
    a training run (the MLflow tracker imports it when asked for)."""
    probe = ("import sys, trainer; from general_util.dist import import_deepspeed; import_deepspeed(); "
             "print(sorted(m for m in ('mlflow', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


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
