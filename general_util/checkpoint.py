"""Checkpoints: DeepSpeed state for resume plus consolidated Hugging Face weights, written atomically.

Layout: `output_dir/checkpoint-<step>/` holds the DeepSpeed tag folder content (model/optimizer shards),
`config.json` + `model.safetensors` (loadable by `from_pretrained`), the tokenizer and the resolved
`training_config.yaml`. A checkpoint is first written as `.tmp-checkpoint-<step>` and renamed when
complete, so a folder named `checkpoint-*` is always whole.
"""
import json
import logging
import os
import re
import shutil
from pathlib import Path

from general_util.dist import DistContext, barrier

logger = logging.getLogger(__name__)
PREFIX = "checkpoint-"
BEST_RECORD = "best_checkpoint.json"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"{PREFIX}{step}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest step first."""
    found = [p for p in output_dir.glob(f"{PREFIX}*") if p.is_dir() and re.fullmatch(rf"{PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def consolidated_state_dict(engine, zero_stage: int) -> dict | None:
    """Full model weights in the training dtype, on global rank 0 only (None elsewhere). Under ZeRO-3
    parameters are gathered one at a time, so no rank builds a full fp32 copy."""
    if zero_stage >= 3:
        return engine._zero3_consolidated_16bit_state_dict()
    if engine.global_rank != 0:
        return None
    return {name: tensor.detach().cpu() for name, tensor in engine.module.state_dict().items()}


def save_hf_weights(engine, directory: Path, tokenizer, config_yaml: str, zero_stage: int, ctx: DistContext) -> None:
    """Called on every rank: `from_pretrained`-loadable safetensors weights, tokenizer and the resolved
    training config, written by global rank 0."""
    state_dict = consolidated_state_dict(engine, zero_stage)
    if ctx.is_main:
        engine.module.save_pretrained(directory, state_dict=state_dict)
        tokenizer.save_pretrained(directory)
        (directory / "training_config.yaml").write_text(config_yaml, encoding="utf-8")
        logger.info("wrote Hugging Face weights to %s", directory)


def save_checkpoint(engine, output_dir: Path, step: int, client_state: dict, tokenizer, config_yaml: str,
                    zero_stage: int, ctx: DistContext) -> Path:
    """Called on every rank. Returns the final checkpoint folder."""
    final = checkpoint_dir(output_dir, step)
    tmp_tag = f".tmp-{final.name}"
    tmp = output_dir / tmp_tag
    if ctx.is_main and tmp.exists():
        shutil.rmtree(tmp)  # left over by a crash during an earlier save
    barrier()
    engine.save_checkpoint(str(output_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    save_hf_weights(engine, tmp, tokenizer, config_yaml, zero_stage, ctx)
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("saved %s", final)
    barrier()
    return final


def apply_retention(output_dir: Path, limit: int, protected: set[Path]) -> list[Path]:
    """Delete the oldest checkpoints beyond the newest `limit`, never one in `protected` (the best)."""
    if limit <= 0:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [p for p in checkpoints[:-limit] if p.resolve() not in {q.resolve() for q in protected}]
    for path in doomed:
        shutil.rmtree(path)
        logger.info("deleted %s (save_total_limit=%d)", path, limit)
    return doomed


class BestTracker:
    """Tracks the best evaluation by `metric` (`measure` +1: higher is better, −1: lower) in
    `output_dir/best_checkpoint.json`."""

    def __init__(self, output_dir: Path, metric: str, measure: int):
        self.path = output_dir / BEST_RECORD
        self.metric, self.measure = metric, measure
        self.record = json.loads(self.path.read_text()) if self.path.exists() else None

    def lookup(self, metrics: dict[str, float]) -> float:
        if self.metric in metrics:
            return metrics[self.metric]
        matches = [k for k in metrics if k.endswith("/" + self.metric)]
        if len(matches) != 1:
            raise KeyError(f"prediction_cfg.metric={self.metric!r} matches {matches or 'nothing'} in {sorted(metrics)}")
        return metrics[matches[0]]

    def update(self, metrics: dict[str, float], step: int, checkpoint: str | None) -> bool:
        """Record `metrics` of `step`; True when they are the new best (written by the caller's rank 0)."""
        value = self.lookup(metrics)
        if self.record is not None and value * self.measure <= self.record["value"] * self.measure:
            return False
        self.record = {"metric": self.metric, "measure": self.measure, "value": value, "step": step,
                       "checkpoint": checkpoint}
        return True

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2))
        os.replace(tmp, self.path)

    @property
    def best_checkpoint(self) -> Path | None:
        if self.record and self.record.get("checkpoint"):
            return self.path.parent / self.record["checkpoint"]
        return None
