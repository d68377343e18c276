"""What the benchmarks share: how a measurement's worker processes start and report (`run_worker_processes`, the
`RESULT` line: `emit_result` / `results_of`), the peak-memory probe (`PeakMemory`), the models they build
(`build_model_dir`), synthetic rows, and our Trainer built as `python trainer.py` builds it.

Every bench is a module run from the repository root: `python -m bench.<name>`."""
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = "RESULT "  # a worker's measurement: one line of stdout, this prefix and a JSON object


def emit_result(result: dict) -> None:
    """Report a worker's measurement to the bench that started it (one line, flushed at once)."""
    print(RESULT + json.dumps(result), flush=True)


def results_of(stdout: str) -> list[dict]:
    """The measurements a worker's stdout reports, in order (`emit_result`)."""
    return [json.loads(line[len(RESULT):]) for line in stdout.splitlines() if line.startswith(RESULT)]


class PeakMemory:
    """A process's peak memory: on CUDA the allocator's statistics, on CPU (Linux) the resident-set high-water
    mark (VmHWM in /proc/self/status). `start()` resets the peak to the level now (CPU: 5 > /proc/self/clear_refs)
    and remembers that level; without it the peak is the process's since it began."""

    def __init__(self, cuda: bool | None = None):
        import torch
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.base = 0

    @staticmethod
    def status_bytes(field: str) -> int:
        """VmRSS (now) or VmHWM (high-water mark) of this process, from /proc/self/status."""
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    def start(self) -> int:
        """Reset the peak to the memory in use now; returns that level in bytes. Garbage left by earlier work is
        collected first: collected inside the measured window, it would offset what the window allocates
        (bench/tests/test_harness.py)."""
        import torch
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self.status_bytes("VmRSS")
        return self.base

    def peak_bytes(self) -> int:
        import torch
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self.status_bytes("VmHWM")

    def growth_bytes(self) -> int:
        """The peak above the level at `start()`."""
        return self.peak_bytes() - self.base


def build_model_dir(directory: Path, vocab_size: int, max_position_embeddings: int, **shape) -> Path:
    """A randomly initialised LLaMA of `shape` (models.tiny.build_model's hidden_size, num_layers, num_heads,
    intermediate_size) saved with the tiny tokenizer in `directory`, for the trainer to load by path."""
    from transformers import AutoTokenizer

    from models.tiny import build_model
    build_model(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, **shape).save_pretrained(directory)
    AutoTokenizer.from_pretrained(REPO / "models" / "tiny_llama").save_pretrained(directory)
    return directory


class RandomTokens:
    """Fixed-length rows of random token ids, every token trained (no padding)."""

    def __init__(self, rows: int, seq: int, seed: int = 0, vocab: int = 1024):
        import torch
        self.ids = torch.randint(3, vocab, (rows, seq), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index].tolist()
        return {"input_ids": ids, "labels": ids, "index": index}


def timed_trainer(overrides: list[str], train_data, logs: dict[int, dict] | None = None):
    """(trainer, log_times): our Trainer composed from conf/demo sft with `overrides` on `train_data` (None: the
    config's), in this rank's process group (joined here), writing no checkpoints; `log_times[step]` is when the
    log line of `step` was written, so a benchmark times the steps between two logs (the logging collective
    included); `logs[step]`, when given, gets that line's values (train/loss, ...)."""
    from hydra import compose, initialize_config_dir

    from general_util.dist import init_distributed
    from trainer import TrainerHooks, build_trainer
    with initialize_config_dir(str(REPO / "conf" / "demo"), version_base="1.3"):
        cfg = compose("sft", overrides=overrides)
    log_times: dict[int, float] = {}
    def on_log(step: int, values: dict) -> None:
        log_times.setdefault(step, time.perf_counter())
        if logs is not None:
            logs[step] = dict(values)

    hooks = TrainerHooks(on_log=on_log, save_checkpoints=False)
    return build_trainer(cfg, init_distributed(), train_data=train_data, hooks=hooks), log_times


def add_fork_workers_argument(parser) -> None:
    parser.add_argument("--fork-workers", action="store_true",
                        help="start each worker from a fork server that has imported the trainer's stack once "
                             "(devtools/forked.py) instead of a fresh interpreter: ~10 s less per worker "
                             "process; absolute memory figures then include the server's imports (the smoke tests)")


def run_worker_processes(target: str | Path, args: list[str], nproc: int, env: dict[str, str], fork: bool,
                         timeout: float | None = None):
    """`python -m <target> <args>` (a module's name; a Path: `python <target> <args>`), nproc 1, or torchrun with
    `nproc` ranks, as a fresh process (group), or forked from the warm fork server (`fork`, --fork-workers): the
    same worker code either way, run from the repository root. Returns the subprocess.CompletedProcess (stdout /
    stderr as text); raises subprocess.TimeoutExpired past `timeout`."""
    if fork:
        from devtools.forked import run_forked, use_warm_fork_server
        use_warm_fork_server()
        return run_forked(target, args, nproc, env, REPO, timeout)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    script = [str(target)] if isinstance(target, Path) else ["-m", target]
    return subprocess.run(launcher + script + args, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
