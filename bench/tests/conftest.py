"""The benchmarks' tests share the suite's hygiene (tests/conftest.py): the environment restored after each test,
no hub, the warm fork server, tmp_path in RAM."""
from tests.conftest import restore_environment  # noqa: F401 - an autouse fixture, used by being here
