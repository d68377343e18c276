"""The benchmarks' workers start as fresh processes (python, torchrun) or forked from the warm fork server
(--fork-workers, devtools/forked.py: the smoke tests): either way a worker sees the same world, the same
arguments, environment and multiprocessing start method, and reports its output and exit code the same way."""
import os
import signal

import pytest

from bench.harness import REPO, emit_result, results_of, run_worker_processes

WORKER = '''
import multiprocessing, os, sys


def say(*parts, stream=sys.stdout):  # one write per line: the ranks of a fresh world share one pipe
    stream.write(" ".join(map(str, parts)) + "\\n")
    stream.flush()


if "RANK" in os.environ:  # torch only where a world is joined: a 1-process worker needs none of it
    import torch.distributed as dist
    dist.init_process_group("gloo")
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, int(os.environ["RANK"]))
    say("ranks", ranks, "local", os.environ["LOCAL_RANK"], "threads", os.environ["OMP_NUM_THREADS"])
    dist.destroy_process_group()
say("argv", sys.argv[1:], "env", os.environ["BENCH_TEST_VALUE"], "cwd", os.getcwd(),
    "start method", multiprocessing.get_start_method(allow_none=True))
say("to stderr", stream=sys.stderr)
if sys.argv[1] == "kill" and os.environ.get("RANK", "0") == "1":
    os.kill(os.getpid(), 9)
sys.exit(int(sys.argv[2]))
'''


@pytest.mark.parametrize("nproc", [1, 2])
def test_forked_workers_see_what_fresh_ones_see(tmp_path, nproc):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "BENCH_TEST_VALUE": "seen"}
    fresh, forked = (run_worker_processes(script, ["exit", "0"], nproc, env, fork, timeout=300)
                     for fork in (False, True))
    assert forked.returncode == fresh.returncode == 0
    lines = sorted(line for line in forked.stdout.splitlines() if line.startswith(("ranks ", "argv ")))
    assert lines == sorted(line for line in fresh.stdout.splitlines() if line.startswith(("ranks ", "argv ")))
    # the platform's default start method, not the fork server's (a DataLoader's workers would start a server)
    assert lines.count(f"argv ['exit', '0'] env seen cwd {REPO} start method None") == nproc
    if nproc == 2:
        assert "ranks [0, 1] local 0 threads 1" in lines and "ranks [0, 1] local 1 threads 1" in lines
    assert forked.stderr.count("to stderr") == fresh.stderr.count("to stderr") == nproc


def test_a_worker_exit_code_is_the_same_forked(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "BENCH_TEST_VALUE": "x"}
    assert [run_worker_processes(script, ["exit", "3"], 1, env, fork, 300).returncode for fork in (False, True)] \
        == [3, 3]


def test_a_killed_forked_rank_is_its_signal(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = run_worker_processes(script, ["kill", "0"], 2, {**os.environ, "BENCH_TEST_VALUE": "x"}, True, 300)
    assert result.returncode == -signal.SIGKILL and result.stdout.count("argv") == 2


def test_a_worker_reports_through_result_lines(capsys):
    emit_result({"tokens_per_second": 1.5, "gpu": "x"})
    emit_result({"second": [1, 2]})
    stdout = "library chatter\n" + capsys.readouterr().out + "RESULTS are not results\n"
    assert results_of(stdout) == [{"tokens_per_second": 1.5, "gpu": "x"}, {"second": [1, 2]}]


PROBE = '''
import gc, sys

import torch

from bench.harness import PeakMemory, emit_result

memory = PeakMemory(cuda=False)
if sys.argv[1] == "garbage":  # 96 MiB an earlier step left in a reference cycle
    gc.disable()
    cycle = {"tensor": torch.ones(24 * 2**20)}
    cycle["self"] = cycle
    del cycle
memory.start()
if sys.argv[1] == "garbage":
    gc.collect()  # a collection inside the measured window, as one may start at any allocation
buffer = torch.ones(16 * 2**20)  # 64 MiB, every page written
del buffer
emit_result({"growth_bytes": memory.growth_bytes()})
'''


@pytest.mark.parametrize("before", ["nothing", "garbage"])
def test_the_cpu_peak_probe_sees_what_a_step_touched(tmp_path, before):
    """VmHWM reset to the resident set at start(): a 64 MiB buffer written and freed shows as growth, also where an
    earlier step left garbage (start() collects it: collected inside the window, it would hide the growth). In a
    forked worker, as the benches measure: no other test's threads or garbage in the process."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = run_worker_processes(script, [before], 1, dict(os.environ), True, 300)
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = results_of(result.stdout)
    assert 60 * 2**20 < report["growth_bytes"] < 200 * 2**20
