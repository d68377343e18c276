"""What the training benchmarks share: synthetic rows and our Trainer built as `python trainer.py` builds it."""
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def timed_trainer(overrides: list[str], train_data):
    """(trainer, log_times): our Trainer composed from conf/demo sft with `overrides` on `train_data`, in this
    rank's process group (joined here), writing no checkpoints; `log_times[step]` is when the log line of `step`
    was written, so a benchmark times the steps between two logs (the logging collective included)."""
    from hydra import compose, initialize_config_dir

    from general_util.dist import init_distributed
    from trainer import TrainerHooks, build_trainer
    with initialize_config_dir(str(REPO / "conf" / "demo"), version_base="1.3"):
        cfg = compose("sft", overrides=overrides)
    log_times: dict[int, float] = {}
    hooks = TrainerHooks(on_log=lambda step, _: log_times.setdefault(step, time.perf_counter()), save_checkpoints=False)
    return build_trainer(cfg, init_distributed(), train_data=train_data, hooks=hooks), log_times
