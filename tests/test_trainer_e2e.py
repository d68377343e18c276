"""End-to-end runs of trainer.py on the tiny model: 1 and 2 ranks, ZeRO-1 and ZeRO-3, gradient
checkpointing on, checkpoints reloaded, TensorBoard read back, two simulated nodes."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from general_util.dist import free_port
from models.convert import main as convert_main
from tests.forked_ranks import run_script
from tests.trainer_runs import FAST, REPO, child_env, read_scalars, run_trainer, scalar_values
from training.deepspeed_engine import import_deepspeed

pytestmark = pytest.mark.slow
STEPS = 15
GLOBAL_BATCH = ["max_steps=15", "gradient_accumulation_steps=1", "model.gradient_checkpointing=true"]
SCALARS = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "train/samples_per_second"}


@pytest.fixture(scope="module")
def one_rank_zero1(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank_zero1")
    run_trainer(out, FAST + GLOBAL_BATCH + ["per_gpu_train_batch_size=4", "save_steps=10", "peak_flops_per_gpu=1e12",
                                            "do_eval=true", "evaluate_during_training=true", "eval_steps=5"])
    return out


@pytest.fixture(scope="module")
def two_ranks_zero1(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks_zero1")
    run_trainer(out, FAST + GLOBAL_BATCH + ["per_gpu_train_batch_size=2"], nproc=2)
    return out


def engine_weights(checkpoint):
    """The fp32 weights of the DeepSpeed state in a checkpoint (what training would resume from)."""
    import_deepspeed()  # without the MLflow import of DeepSpeed's autotuner (~2 s of this worker's time)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)


def assert_reload_matches_engine(checkpoint):
    hf_model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    engine_model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    engine_model.load_state_dict(engine_weights(checkpoint))
    input_ids = torch.tensor([[1, 300, 301, 302, 303, 304, 2]])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(input_ids).logits, engine_model(input_ids).logits, atol=1e-6, rtol=0)


def assert_converts_to_hf(checkpoint, tmp_path, command_line=False):
    """`models.convert zero-to-hf` of the DeepSpeed state gives the weights the trainer saved; `command_line`:
    as users run it, `python -m models.convert` (forked, tests/forked_ranks.py; else its `main` in-process, as
    test_convert.py)."""
    arguments = ["zero-to-hf", str(checkpoint), str(tmp_path / "hf")]
    if command_line:
        result = run_script("-m models.convert", arguments, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        assert convert_main(arguments) == 0
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    saved = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    input_ids = torch.tensor([[1, 300, 301, 302, 303, 304, 2]])
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids).logits, saved(input_ids).logits, atol=1e-6, rtol=0)


def assert_trained(output_dir):
    values = scalar_values(output_dir)
    assert len(values) == STEPS
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.3, values
    final = output_dir / f"checkpoint-{STEPS}"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert (final / "training_config.yaml").is_file()
    assert_reload_matches_engine(final)


def test_one_rank_zero1_trains_saves_and_reloads(one_rank_zero1):
    assert_trained(one_rank_zero1)
    assert sorted(p.name for p in one_rank_zero1.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-15"]
    assert not list(one_rank_zero1.glob(".tmp-*"))


def test_tensorboard_holds_every_scalar(one_rank_zero1):
    scalars = read_scalars(one_rank_zero1)
    assert SCALARS <= set(scalars)
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, STEPS + 1))
    assert {"eval/dev_loss/loss", "eval/dev_loss/perplexity"} <= set(scalars)
    assert [step for step, _ in scalars["eval/dev_loss/loss"]] == [5, 10, 15]
    # MFU = tokens/s × FLOPs per token / peak: 6 per parameter plus attention at the step's row length
    # (2 layers, hidden 64): one micro-batch per step and per log, padded to a multiple of 8, ≤ 256 tokens
    for (step, mfu), (_, tokens_per_second) in zip(scalars["train/mfu"], scalars["train/tokens_per_second"]):
        row_length = (mfu * 1e12 / tokens_per_second - 6 * 231_744) / (12 * 2 * 64)
        assert abs(row_length - round(row_length)) < 0.01 and round(row_length) % 8 == 0, (step, row_length)
        assert 8 <= round(row_length) <= 256
    best = json.loads((one_rank_zero1 / "best_checkpoint.json").read_text())
    assert best["metric"] == "dev_loss/loss" and best["step"] in (5, 10, 15)


def test_two_ranks_zero1_shards_optimizer_and_matches_one_rank(one_rank_zero1, two_ranks_zero1, tmp_path):
    assert_trained(two_ranks_zero1)
    assert_converts_to_hf(two_ranks_zero1 / f"checkpoint-{STEPS}", tmp_path, command_line=True)
    shards = sorted(p.name for p in (two_ranks_zero1 / f"checkpoint-{STEPS}").glob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    # Same global batch (1 × 4 vs 2 × 2): the same samples, the same loss normalisation.
    for one, two in zip(scalar_values(one_rank_zero1)[:5], scalar_values(two_ranks_zero1)[:5]):
        assert abs(one - two) < 1e-4
    rank_logs = sorted(p.name for p in (two_ranks_zero1 / "logs").glob("rank*.log"))
    assert rank_logs == ["rank0.log", "rank1.log"]


@pytest.mark.parametrize("stage, nproc", [("zero2", 2), ("zero3", 1), ("zero3", 2)])
def test_zero2_zero3_with_gradient_checkpointing(tmp_path, stage, nproc):
    out = tmp_path / "run"
    run_trainer(out, FAST + GLOBAL_BATCH + [f"deepspeed@ds_cfg={stage}", f"per_gpu_train_batch_size={4 // nproc}"],
                nproc=nproc)
    assert_trained(out)
    assert_converts_to_hf(out / f"checkpoint-{STEPS}", tmp_path)


def test_two_nodes_only_global_rank0_writes(tmp_path):
    """Two single-process 'nodes' on localhost: local rank 0 of node 1 must not write shared outputs."""
    port = free_port()
    env = child_env()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "trainer.py", "-cp", "conf/demo", "-cn", "sft", f"output_dir={tmp_path}", "max_steps=4",
                               "per_gpu_train_batch_size=2", *FAST],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "wrote Hugging Face weights" in (tmp_path / "logs" / "rank0.log").read_text()
    assert "wrote Hugging Face weights" not in (tmp_path / "logs" / "rank1.log").read_text()
    assert (tmp_path / "checkpoint-4" / "model.safetensors").is_file()
