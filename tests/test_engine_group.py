"""The engine is the Hydra group conf/engine/ (training/engine.py's `Engine`): `engine=fsdp2` alone switches a task
config written for DeepSpeed ZeRO-3 (conf/llama/zh), reading its `ds_cfg` as FSDP2's own sharding; the old command
lines keep working or stop in one line naming the new form; a key of one engine under the other, or a typo, is
refused in one line; a checkpoint is continued by the engine whose format it holds."""
import json
import math

import pytest

from general_util.cli import convert_legacy_arguments
from general_util.errors import ConfigError, UserError, one_line
from tests.trainer_runs import REPO, compose_config, scalar_values, train_in_process
from training.config import validate
from training.engine import engine_of

ZERO3_TASK = ("conf/llama/zh", "llama_13b_zh_pretrain_packed_zero3")  # `- override /deepspeed@ds_cfg: zero3`
ZERO2_TASK = ("conf/llama/zh", "llama_7b_zh_lora_sft")  # `- override /deepspeed@ds_cfg: zero2`
TINY = ["model_name_or_path=models/tiny_llama", "data.num_proc=1"]
WUDAO = TINY + ["train_file=data/samples/wudao_sample.json"]
ALPACA = TINY + ["train_file=data/samples/alpaca_zh_en_train.jsonl"]


def composed(overrides: list[str], config=("conf/demo", "sft")):
    return compose_config(overrides, config, output_dir=REPO / "unused")


@pytest.mark.parametrize("config, overrides, stage, sharding", [
    (ZERO3_TASK, WUDAO, 3, (True, False)),  # ZeRO-3: full sharding
    (ZERO3_TASK, WUDAO + ["deepspeed@ds_cfg=zero3_offload"], 3, (True, True)),  # + offload: CPUOffloadPolicy
    (ZERO2_TASK, ALPACA, 2, (False, False)),  # ZeRO-2: layers kept gathered until backward
    (ZERO3_TASK, WUDAO + ["engine.reshard_after_forward=false", "engine.cpu_offload=true"], 3, (False, True)),
    (("conf/demo", "sft"), ["deepspeed@ds_cfg=zero1"], 1, (True, False)),  # the old `engine=fsdp2 deepspeed@ds_cfg=zero1`
], ids=["zero3", "zero3_offload", "zero2", "own_keys_win", "old_zero1_form"])
def test_engine_fsdp2_alone_switches_a_task_config_and_reads_its_zero_stage(config, overrides, stage, sharding):
    deepspeed = composed([o for o in overrides if not o.startswith("engine.")], config)
    assert engine_of(deepspeed).name == "deepspeed" and deepspeed.ds_cfg.zero_optimization.stage == stage
    cfg = composed(["engine=fsdp2", *overrides], config)
    validate(cfg, world_size=2)  # the preflight: nothing of ds_cfg is refused
    engine = engine_of(cfg)
    assert engine.name == "fsdp2" and cfg.ds_cfg.zero_optimization.stage == stage
    assert engine.sharding(cfg) == sharding


def test_a_zero3_task_config_trains_under_fsdp2_and_its_checkpoint_names_its_engine(tmp_path, capsys):
    """The ZeRO-3 task config on the tiny model: the dry run plans FSDP2's full sharding; 2 steps write a DCP
    checkpoint (no DeepSpeed state) that the old command line (`deepspeed@ds_cfg=zero1`: the sharding may change,
    DCP re-shards) continues exactly, and that DeepSpeed refuses in one line, even for its weights alone."""
    run = WUDAO + [f"data.cache_dir={tmp_path / 'cache'}", "engine=fsdp2", "per_gpu_train_batch_size=1",
                   "gradient_accumulation_steps=1", "train_dataset.max_seq_length=128", "logging_steps=1",
                   "warmup_steps=0", "save_steps=-1"]
    out = tmp_path / "out"
    train_in_process(out, run + ["dry_run=true"], config=ZERO3_TASK)
    assert "per-GPU memory estimate (FSDP2, bf16, world 1," in capsys.readouterr().out
    train_in_process(out, run + ["max_steps=2"], config=ZERO3_TASK)
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "dcp" / ".metadata").is_file() and not list(checkpoint.glob("*model_states.pt"))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["engine"] == "fsdp2"
    train_in_process(out, run + ["max_steps=3", "resume=auto", "deepspeed@ds_cfg=zero1"], config=ZERO3_TASK)
    losses = scalar_values(out)
    assert len(losses) == 3 and all(map(math.isfinite, losses))
    for mode in ("exact", "weights_only"):
        with pytest.raises(UserError) as refused:
            deepspeed = [arg.replace("engine=fsdp2", "engine=deepspeed") for arg in run]
            train_in_process(tmp_path / mode, deepspeed + ["max_steps=4", f"resume={checkpoint}", f"resume_mode={mode}"],
                             config=ZERO3_TASK)
        expected = ("engine fsdp2 → deepspeed" if mode == "exact" else
                    f"{checkpoint} holds no engine=deepspeed state (another engine wrote it): continue it under that "
                    f"engine, or start from its Hugging Face weights with model_name_or_path={checkpoint} resume=null")
        assert expected in one_line(refused.value)


def test_old_command_lines_keep_working_or_stop_in_one_line(capsys):
    """`fsdp2.key=value` (the former top-level block) becomes `engine.key=value`, noted once; an unknown engine
    stops before Hydra in one line (exit 2)."""
    kept = convert_legacy_arguments(["trainer.py", "engine=fsdp2", "fsdp2.cpu_offload=true",
                                     "fsdp2.reshard_after_forward=false"])
    assert kept[1:] == ["engine=fsdp2", "++engine.cpu_offload=true", "++engine.reshard_after_forward=false"]
    assert "fsdp2.cpu_offload=true → engine.cpu_offload=true" in capsys.readouterr().err
    cfg = composed(kept[1:])
    validate(cfg, world_size=1)
    assert engine_of(cfg).sharding(cfg) == (False, True)
    with pytest.raises(SystemExit) as stopped:
        convert_legacy_arguments(["trainer.py", "engine=fsdp"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: engine=fsdp: use one of deepspeed, fsdp2 (conf/engine/)"]


@pytest.mark.parametrize("argv, message", [
    (["fsdp2.cpu_offload=true"], "error: engine.cpu_offload=True: a setting of engine=fsdp2, not of "
                                 "training.deepspeed_engine.DeepSpeed; select engine=fsdp2 or remove it"),
    (["engine=fsdp2", "engine.cpu_ofload=true"], "error: engine.cpu_ofload: not a parameter of "
                                                 "training.fsdp2_engine.FSDP2; did you mean 'cpu_offload'?"),
    (["engine=fsdp2", "engine.cpu_offload=yes"], "error: engine.cpu_offload='yes': use true, false or null (null: from "
                                                 "ds_cfg)"),
    (["engine=fsdp2", "deepspeed@ds_cfg=zero3_offload", "ds_cfg.zero_optimization.offload_param.device=nvme"],
     "error: ds_cfg.zero_optimization.offload_param.device=nvme: engine=fsdp2 offloads parameters, gradients and "
     "optimizer states together, to CPU memory (CPUOffloadPolicy); use deepspeed@ds_cfg=zero3_offload, or set "
     "engine.cpu_offload=true or false"),
], ids=["other_engines_key", "typo", "not_a_bool", "nvme_offload"])
def test_wrong_engine_keys_are_refused_in_one_line(argv, message):
    cfg = composed(convert_legacy_arguments(["trainer.py", *argv])[1:])
    with pytest.raises(ConfigError) as refused:
        validate(cfg, world_size=1)
    assert one_line(refused.value) == message


def test_a_task_config_of_the_former_form_is_refused_in_one_line(tmp_path):
    """A top-level `engine: fsdp2` and `fsdp2:` block, as task configs had them, name where they went."""
    (tmp_path / "old.yaml").write_text("defaults:\n  - /base\n  - _self_\nmodel_name_or_path: models/tiny_llama\n"
                                       "train_file: data/samples/alpaca_zh_en_train.jsonl\nengine: fsdp2\n"
                                       "fsdp2:\n  cpu_offload: true\n")
    cfg = compose_config(["+data@train_dataset=sft"], (str(tmp_path), "old"), output_dir=REPO / "unused")
    with pytest.raises(ConfigError) as refused:
        validate(cfg, world_size=1)
    assert one_line(refused.value) == (
        "error: unknown top-level key 'fsdp2'; its keys are engine.<key> now; engine='fsdp2': the engine is the config "
        "group conf/engine/ now: select it in the task config's defaults list (- override /engine: fsdp2) or on the "
        "command line (engine=fsdp2)")
