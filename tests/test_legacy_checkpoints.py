"""Checkpoints of the original PandaLLM trainer (`checkpoint-<step>/pytorch_model.bin` + config.json, no
safetensors) load as `model_name_or_path` and are swept, in step order, by the evaluation over checkpoint-*."""
import json
import shutil

import torch
from safetensors.torch import load_file

from tests.trainer_runs import train_in_process


def legacy_checkpoint(folder, scale: float):
    """The tiny model's weights (scaled, so the checkpoints differ) in the original layout."""
    folder.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"models/tiny_llama/{name}", folder / name)
    weights = {name: tensor * scale for name, tensor in load_file("models/tiny_llama/model.safetensors").items()}
    torch.save(weights, folder / "pytorch_model.bin")


def test_original_bin_checkpoints_are_swept_in_step_order(tmp_path, capsys):
    for step, scale in ((500, 1.0), (250, 0.5)):
        legacy_checkpoint(tmp_path / f"checkpoint-{step}", scale)
    train_in_process(tmp_path, ["model_name_or_path=models/tiny_llama", "precision=fp32"], config=("conf/demo", "eval"))
    assert "evaluated 2 model(s)" in capsys.readouterr().out
    rows = (tmp_path / "eval_summary.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == [250, 500]
    metrics = {p.parent.parent.name: json.loads(p.read_text())
               for p in tmp_path.glob("eval/checkpoint-*/logiqa_v2_zh/metrics.json")}
    assert set(metrics) == {"checkpoint-250", "checkpoint-500"}


def test_an_original_checkpoint_loads_as_the_model(tmp_path, capsys):
    legacy_checkpoint(tmp_path / "checkpoint-250", 1.0)
    train_in_process(tmp_path / "eval", [f"model_name_or_path={tmp_path / 'checkpoint-250'}", "precision=fp32"],
                     config=("conf/demo", "eval"))
    assert "evaluated 1 model(s)" in capsys.readouterr().out
