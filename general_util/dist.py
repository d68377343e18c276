"""Process-group set-up and the few collectives the trainer and evaluators share.

Works the same launched by `deepspeed`, `torchrun`, or as a plain `python` process (then the rank
environment is filled in here). CUDA → nccl, otherwise gloo. The process group is torch.distributed's own: the
DeepSpeed engine joins it when it is built (training/deepspeed_engine.py), and nothing here imports DeepSpeed,
so the FSDP2 engine runs where DeepSpeed is not installed.
"""
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as torch_dist

from general_util.errors import UserError


def consume_local_rank_arg(argv: list[str]) -> list[str]:
    """Remove the launcher's `--local_rank=N` / `--local_rank N` from argv (Hydra would reject it) and
    export it as LOCAL_RANK."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ["LOCAL_RANK"] = arg.split("=", 1)[1]
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ["LOCAL_RANK"] = argv[i + 1]
            i += 1
        else:
            kept.append(arg)
        i += 1
    return kept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_single_process_env() -> None:
    """Without a launcher, become rank 0 of a world of one."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("LOCAL_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Global rank 0: the only process that writes shared outputs (TensorBoard, weights, configs)."""
        return self.rank == 0


def init_distributed(timeout_s: float | None = None) -> DistContext:
    """Join the job's process group (env://: the launcher's RANK, WORLD_SIZE, MASTER_ADDR/PORT) on this rank's
    device. `timeout_s`: how long a collective may wait for a peer (None: 10 minutes, DeepSpeed's default). A
    peer that died is noticed at once (its connections close); the timeout only bounds one that hangs."""
    fill_single_process_env()
    if torch.cuda.is_available():
        backend = "nccl"
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        backend = "gloo"
        device = torch.device("cpu")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s or 600))
    global PEERS
    PEERS = gather_objects((socket.gethostname(), os.getpid()))
    return DistContext(rank=torch_dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                       world_size=torch_dist.get_world_size(), device=device)


PEERS: list[tuple[str, int]] = []  # (host, pid) of every rank, in rank order, gathered at init


class PeerLostError(UserError, RuntimeError):
    """Another rank of the job is gone; this rank stops too. The message is one line."""
    exit_code = 1  # not a configuration problem: the job failed (a scheduler may retry it with resume=auto)


def lost_peer_error(error: BaseException) -> PeerLostError | None:
    """After a collective failed on a closed connection (a peer process died: the kernel closed its sockets),
    the one line naming the rank(s) gone; None for any other error. Ranks on this host are found by pid (a
    dying peer may take a moment to exit, so they are looked at for up to 10 s); those on other hosts cannot
    be checked, their node's launcher names them."""
    if len(PEERS) < 2 or not is_connection_error(error):
        return None
    host, me = socket.gethostname(), torch_dist.get_rank() if torch_dist.is_initialized() else 0
    local_peers = [(rank, pid) for rank, (peer_host, pid) in enumerate(PEERS) if rank != me and peer_host == host]
    for _ in range(50):
        gone = [f"rank {rank} (pid {pid} on {host})" for rank, pid in local_peers if not pid_alive(pid)]
        if gone:
            break
        time.sleep(0.2)
    remote = sorted({peer_host for peer_host, _ in PEERS if peer_host != host})
    who = ", ".join(gone) if gone else f"a rank on {', '.join(remote) or host}"
    detail = " ".join(str(error).split())[:200]
    return PeerLostError(f"{who} is gone, so rank {me} stops too (a collective failed: {detail}); the newest complete "
                         f"checkpoint in output_dir is the resume point: relaunch with resume=auto")


def is_connection_error(error: BaseException) -> bool:
    """A collective that failed because a peer's connection closed (gloo; nccl once aborted)."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(mark in text for mark in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted"))


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs on this host (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def teardown(engine=None, close_data=None, clean: bool = True, keep_process_group: bool = False) -> None:
    """End this rank in order, so that no gloo or DeepSpeed thread is still running when the interpreter
    exits (on a loaded machine a finished 2-rank ZeRO-3 run, ours and HF Trainer's alike, had one rank abort
    at exit with `terminate called without an active exception`, exit −6): `engine.close()` (ZeRO hooks
    and partitioned parameters), `close_data()` (data-loader workers), a barrier, so that no rank destroys
    its process group while a peer still talks to it, then `destroy_process_group()`.
    `clean=False` (after an error) skips the barrier, since the other ranks may be anywhere (a barrier could
    pair with one of theirs and hang), and only logs teardown errors so that they do not hide the first one.
    `keep_process_group`: a caller that runs several jobs in one process (the in-process tests) keeps its
    world of one, since DeepSpeed caches groups made from it that a new process group would not match."""
    steps = [getattr(engine, "close", None), close_data]
    if torch_dist.is_initialized() and not keep_process_group:
        steps += [torch_dist.barrier if clean else None, torch_dist.destroy_process_group]
    for step in steps:
        if step is None:
            continue
        try:
            step()
        except Exception:  # noqa: BLE001
            if clean:
                raise
            logging.getLogger(__name__).warning("teardown after an error: %s failed", step, exc_info=True)


def exit_process(code: int) -> None:
    """Leave without running the interpreter's exit-time destructors: DeepSpeed keeps its gloo/nccl groups
    referenced, so their threads are still alive at exit, and destroying them then has aborted a finished
    rank (`terminate called without an active exception`, SIGABRT). Call it after `teardown`."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def current() -> DistContext:
    """The context of an initialised process group (or a world of one when there is none)."""
    if not torch_dist.is_initialized():
        return DistContext(0, 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return DistContext(torch_dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), torch_dist.get_world_size(), device)


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum / max / min / mean); a no-op in a world of one."""
    if torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
        reduce_op = {"sum": torch_dist.ReduceOp.SUM, "max": torch_dist.ReduceOp.MAX,
                     "min": torch_dist.ReduceOp.MIN, "mean": torch_dist.ReduceOp.SUM}[op]
        torch_dist.all_reduce(tensor, op=reduce_op)
        if op == "mean":
            tensor /= torch_dist.get_world_size()
    return tensor


def broadcast_object(obj, src: int = 0):
    """Global rank `src`'s `obj` on every rank (all ranks must call it)."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def decided_by_rank0(decide) -> None:
    """Run `decide()` on global rank 0 only and raise the UserError it raised on every rank, so that all ranks
    stop together (or go on together) on a decision about shared state, e.g. the output folder."""
    verdict = None
    if current().is_main:
        try:
            decide()
        except UserError as error:
            verdict = error
    verdict = broadcast_object(verdict)
    if verdict is not None:
        raise verdict


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (all ranks must call it)."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return [obj]
    out = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def shard_range(num_items: int, rank: int, world_size: int) -> range:
    """A contiguous, non-overlapping share of `num_items` for `rank`; sizes differ by at most one.
    No item is duplicated (unlike DistributedSampler's padding)."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def print_rank0(*args, **kwargs) -> None:
    if current().is_main:
        print(*args, **kwargs)
