"""Two "nodes" on this machine through DeepSpeed's own multi-node runner: a hostfile, and each node started by
hand with `deepspeed --hostfile F --no_ssh --node_rank N --master_addr ... --master_port ...` (what a SLURM
step does per node; the README shows the commands). Training and a stop with a checkpoint (SIGTERM,
as a scheduler sends it) through the runner, then the resume in forked ranks with the same two-node environment
(a rank per node, LOCAL_RANK 0 on both: tests/forked_ranks.py); only global rank 0 writes the shared outputs.

The pdsh/ssh path (`deepspeed --hostfile` without --no_ssh) runs too, where Debian's openssh-server and pdsh are
installed (.ci/run installs them as root): the test starts an sshd of its own on a loopback port with throwaway
keys, and DeepSpeed's runner reaches both "nodes" (localhost, 127.0.0.1) through pdsh and that sshd: train and
stop (SIGTERM); the resume runs in forked ranks, as above. Without them it skips, saying why (and warning, so that the skip is seen)."""
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import pytest

from general_util.dist import free_port
from tests.trainer_runs import FAST, REPO, launcher_env, run_trainer

pytestmark = pytest.mark.slow


def deepspeed_nodes(hostfile, output_dir, overrides, env=None):
    """Both nodes' runners, run together; returns [(exit code, output)] per node."""
    port = free_port()
    procs = [subprocess.Popen(["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "trainer.py",
                               "-cp", "conf/demo", "-cn", "sft", f"output_dir={output_dir}", *overrides],
                              cwd=REPO, env=launcher_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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


def ssh_path_missing() -> str | None:
    """Why the pdsh/ssh path cannot run here (None: it can): Debian's openssh-server and pdsh (apt-get install
    openssh-server pdsh; .ci/run installs them), and root, which sshd needs for its privilege separation."""
    missing = [tool for tool, path in (("sshd", "/usr/sbin/sshd"), ("pdsh", shutil.which("pdsh")),
                                       ("ssh-keygen", shutil.which("ssh-keygen"))) if not path or not os.path.exists(path)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install openssh-server pdsh)"
    if os.geteuid() != 0:
        return "sshd on a loopback port needs root here (CI runs as root)"
    return None


@pytest.fixture
def loopback_sshd(tmp_path):
    """An sshd of this test's own on 127.0.0.1:<free port> with throwaway host and user keys; yields (port, the
    ssh options pdsh needs to use the key)."""
    reason = ssh_path_missing()
    if reason:
        warnings.warn(f"pdsh/ssh two-node test skipped: {reason}")
        pytest.skip(reason)
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "user_key.pub").read_text())
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host_key'}\n"
                      f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
                      "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                      "PermitRootLogin prohibit-password\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    options = (f"-i {keys / 'user_key'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes "
               f"-o LogLevel=ERROR")
    try:
        log = []
        for line in sshd.stderr:  # its log (-e): it says when it listens, or ends (EOF) when it cannot start
            log.append(line)
            if line.startswith(f"Server listening on 127.0.0.1 port {port}"):
                break
        drain = threading.Thread(target=lambda: log.extend(sshd.stderr), daemon=True)  # never blocked on a full pipe
        drain.start()
        probe = subprocess.run(["ssh", *options.split(), "-p", str(port), "127.0.0.1", "true"], capture_output=True)
        assert probe.returncode == 0, f"sshd did not accept the key: {probe.stderr.decode()[-2000:]}{''.join(log)[-2000:]}"
        yield port, options
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)


def pdsh_nodes(tmp_path, port: int, options: str, output_dir, overrides, fault: str | None = None):
    """`deepspeed --hostfile` over pdsh/ssh: two one-slot "nodes" (localhost and 127.0.0.1, both this machine
    through the test's sshd). The ranks' environment reaches them through DeepSpeed's DS_ENV_FILE exports."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    exports = tmp_path / "ds_env"
    exports.write_text("OMP_NUM_THREADS=1\nPYTHONUNBUFFERED=1\n" + (f"LLAMA_TRAINER_FAULT={fault}\n" if fault else ""))
    env = launcher_env(DS_ENV_FILE=str(exports), PDSH_SSH_ARGS_APPEND=options)
    return subprocess.run(["deepspeed", "--hostfile", str(hostfile), "--ssh_port", str(port), "--no_ssh_check",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "trainer.py",
                           "-cp", "conf/demo", "-cn", "sft", f"output_dir={output_dir}", *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_two_nodes_over_ssh_through_pdsh_train_stop_and_resume(tmp_path, loopback_sshd):
    port, options = loopback_sshd
    out = tmp_path / "run"
    run = FAST + ["max_steps=6", "per_gpu_train_batch_size=2"]
    first = pdsh_nodes(tmp_path, port, options, out, run, fault="sigterm@step=2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "cmd = pdsh -S -f 1024 -w localhost,127.0.0.1" in first.stdout + first.stderr  # DeepSpeed's pdsh runner
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    # the resume in forked ranks with the two nodes' environment, as the runner test's: a second pdsh launch would
    # take the same path as the first (~20 s of CPU for the runner, pdsh, ssh and a fresh interpreter per node)
    second = run_trainer(out, run + ["resume=auto"], nproc=2, nnodes=2)
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["rank0.log", "rank1.log"], sorted(map(str, out.rglob("*")))
    rank0, rank1 = ((out / "logs" / f"rank{r}.log").read_text() for r in (0, 1))
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in rank0 and "data-parallel ranks 2 × micro batch 2" in rank0
    assert "wrote Hugging Face weights" in rank0 and "wrote Hugging Face weights" not in rank1  # only global rank 0
    final = out / "checkpoint-6"
    assert len(list(final.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))) == 2  # both nodes' shards
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # rank 0's, once per run
    assert "done: 6 optimizer steps" in second.stdout and second.stdout.count("done:") == 1  # rank 0's line only
