"""Shared test hygiene."""
import os

import pytest

from tests.forked_ranks import use_warm_fork_server


@pytest.fixture(autouse=True)
def restore_environment():
    """Undo every change a test makes to os.environ. Code under test (fill_single_process_env,
    consume_local_rank_arg, in-process evaluators) sets RANK/MASTER_PORT/...; leaked into later tests
    they make child trainers join a stale rendezvous port (EADDRINUSE)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


use_warm_fork_server()  # before anything in this worker starts multiprocessing's fork server
