"""Shared test hygiene."""
import gc
import os
import sys

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
# One OpenMP thread per process, as child_env gives every rank: pytest-xdist runs one worker per core, and a worker's
# in-process torch with a thread per core besides oversubscribes the cores (measured on 2 cores under load:
# tests/test_preference_parity.py took 36 s of CPU with 2 threads, 11 s with 1). Set before torch is imported (here,
# the fork server, the children that inherit this environment).
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # a pytest plugin imported it first: its OpenMP read the environment then
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Likewise one thread per fast tokenizer (its Rust thread pool would spread each batch over every core; the data
# pipeline's worker processes set the same, data/tokenization.py). tests/test_model_families.py (the Llama-3 and Qwen
# tokenizers): 53.5 s of CPU with the pool, 48.3 s without.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
use_warm_fork_server()
# tmp_path (the runs' checkpoints, logs, caches) in RAM where the machine has a tmpfs: a suite's few hundred MB of
# checkpoint writes and fsyncs then wait on no disk another job may be using (~10 % of a checkpointing test's time
# on an idle one). pytest reads the variable when it first makes a tmp_path; pytest.ini keeps only failed tests'.
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", "/dev/shm")


# The files that take longest on 2 cores (measured: 12–80 s), longest first, ahead of the rest: pytest-xdist
# hands out whole files (--dist=loadfile) in collection order (--no-loadscope-reorder, pytest.ini), so that
# no long file starts last and leaves the other worker idle. Only the order changes.
LONGEST_FIRST = ["test_model_families_ranks.py", "test_ending_matrix_two_ranks.py", "test_ending_matrix.py",
                 "test_model_families.py", "test_gpu_check.py", "test_lm_eval_evaluator.py",
                 "test_fsdp2.py", "test_preference_training.py", "test_grpo_demo.py", "test_grpo_vllm.py",
                 "test_rank_failure.py", "test_deepspeed_multinode.py", "test_sequence_parallel.py",
                 "test_repeated_jobs.py", "test_trainer_e2e.py", "test_bench_delta_memory.py", "test_elastic_resume.py",
                 "test_preference_parity.py", "test_save_failures.py", "test_loss_memory.py", "test_seed_multi_run.py",
                 "test_long_context.py", "test_cli_errors.py", "test_original_configs.py"]


def pytest_collection_modifyitems(items):
    position = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: position.get(item.path.name, len(position)))  # stable: the rest keep their order


def pytest_collection_finish(session):
    """Freeze what collection imported (torch, transformers, DeepSpeed, the project) out of the garbage collector's
    reach (gc.freeze), as the fork server does for its children (devtools/frozen_heap.py): the full collections
    of in-process runs (DeepSpeed's ZeRO set-up calls gc.collect()) then walk only what the tests made."""
    gc.collect()
    gc.freeze()
