"""Two "nodes" on this machine through DeepSpeed's own multi-node runner: a hostfile, and each node started by
hand with `deepspeed --hostfile F --no_ssh --node_rank N --master_addr ... --master_port ...` (what a SLURM
step does per node; the README shows the commands). The pdsh/ssh path is not tested: it needs an ssh server on
localhost, which a test cannot start without root and host keys. Training and a stop with a checkpoint (SIGTERM,
as a scheduler sends it) through the runner, then the resume in forked ranks with the same two-node environment
(a rank per node, LOCAL_RANK 0 on both: tests/forked_ranks.py); only global rank 0 writes the shared outputs."""
import subprocess

import pytest

from general_util.dist import free_port
from tests.trainer_runs import FAST, REPO, child_env, run_trainer

pytestmark = pytest.mark.slow


def deepspeed_nodes(hostfile, output_dir, overrides, env=None):
    """Both nodes' runners, run together; returns [(exit code, output)] per node."""
    port = free_port()
    procs = [subprocess.Popen(["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "trainer.py",
                               "-cp", "conf/demo", "-cn", "sft", f"output_dir={output_dir}", *overrides],
                              cwd=REPO, env=child_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for node in (0, 1)]
    return [(p.returncode, out) for p, out in ((p, p.communicate(timeout=600)[0]) for p in procs)]


def test_two_nodes_through_the_deepspeed_runner_train_stop_and_resume(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")  # one process per node (CPU: slot 0 only)
    out = tmp_path / "run"
    run = FAST + ["max_steps=6", "per_gpu_train_batch_size=2"]
    # SIGTERM on every rank after step 2: the stop is agreed in step 3, saved as checkpoint-3, exit 0
    first = deepspeed_nodes(hostfile, out, run, env={"LLAMA_TRAINER_FAULT": "sigterm@step=2"})
    assert [code for code, _ in first] == [0, 0], first[0][1][-3000:] + first[1][1][-3000:]
    assert "nnodes=2, num_local_procs=1, node_rank=1" in first[1][1]  # DeepSpeed's launcher, as node 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    second = run_trainer(out, run + ["resume=auto"], nproc=2, nnodes=2)
    rank0, rank1 = ((out / "logs" / f"rank{r}.log").read_text() for r in (0, 1))
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in rank0 and "data-parallel ranks 2 × micro batch 2" in rank0
    assert "wrote Hugging Face weights" in rank0 and "wrote Hugging Face weights" not in rank1
    final = out / "checkpoint-6"
    assert (final / "model.safetensors").is_file()
    assert len(list(final.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))) == 2  # both nodes' shards
    # one events file per run (the stopped one and the resumed one), both from global rank 0: node 1 wrote none
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert "done: 6 optimizer steps" in second.stdout and second.stdout.count("done:") == 1  # rank 0's line only
