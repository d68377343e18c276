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


# Tests never reach a hub. Set before anything imports huggingface_hub / datasets (they read it at import),
# here and in the fork server, which this worker starts later (it imports the trainer's stack once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
use_warm_fork_server()
