"""engine=fsdp2 (training/fsdp2_engine.py) means what engine=deepspeed means: the same per-step losses as ZeRO-3
at 1 and 2 ranks (accumulation 2, fp32), with LoRA and gradient checkpointing, the same NaN guard; DCP checkpoints
resume bitwise after a kill and re-shard to another world size; the HF export and `models.convert` give the
engine's weights; evaluation with generation runs in lockstep on 2 ranks; preflight refuses each engine's
settings under the other. Every launch costs seconds, so the runs are module fixtures shared by the tests."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from general_util.errors import ConfigError
from tests.forked_ranks import run_script
from tests.trainer_runs import FAST, REPO, child_env, compose_config, read_scalars, run_trainer

pytestmark = pytest.mark.slow
STEPS = 8
RUN = FAST + [f"max_steps={STEPS}", "save_steps=3", "gradient_accumulation_steps=2"]  # checkpoints 3, 6, 8
FSDP2 = ["engine=fsdp2"]
ZERO3 = ["deepspeed@ds_cfg=zero3"]
# evaluation at the last step with a generating evaluator: two ranks must generate in lockstep (synced_gpus)
EVAL = ["evaluate_during_training=true", "do_eval=true", f"eval_steps={STEPS}", "+eval@evaluators.c3_d=c3_d",
        "evaluators.c3_d.scoring=generate", "evaluators.c3_d.prompt.answer_format=letter",
        "+evaluators.c3_d.generation={max_new_tokens:4}", "evaluators.c3_d.limit=7", "evaluators.c3_d.batch_size=3"]


def split(nproc: int) -> list[str]:
    """The same global batch of 8 at 1 and 2 ranks."""
    return [f"per_gpu_train_batch_size={8 // nproc // 2}"]


def train(output_dir, overrides, nproc, **kwargs):
    return run_trainer(output_dir, overrides + split(nproc), nproc=nproc, **kwargs)


def losses(output_dir) -> dict[int, float]:
    return dict(read_scalars(output_dir)["train/loss"])


def assert_close(a: dict, b: dict, rel: float, steps) -> None:
    assert all(abs(a[s] - b[s]) <= rel * abs(b[s]) for s in steps), {s: (a[s], b[s]) for s in steps}


@pytest.fixture(scope="module")
def fsdp2_2ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2_2")
    train(out, [arg for arg in RUN if "eval" not in arg] + FSDP2 + EVAL, nproc=2)
    return out


@pytest.fixture(scope="module")
def fsdp2_1rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2_1")
    train(out, RUN + FSDP2, nproc=1)
    return out


@pytest.mark.parametrize("nproc", [1, 2])
def test_losses_match_deepspeed_zero3(nproc, fsdp2_1rank, fsdp2_2ranks, tmp_path):
    train(tmp_path, RUN + ZERO3 + ["save_steps=-1"], nproc=nproc)
    fsdp2 = losses(fsdp2_1rank if nproc == 1 else fsdp2_2ranks)
    assert sorted(fsdp2) == list(range(1, STEPS + 1))
    assert_close(fsdp2, losses(tmp_path), 1e-4, range(1, STEPS + 1))
    assert losses(tmp_path)[STEPS] < losses(tmp_path)[1] - 0.3  # it trained


def test_kill_then_resume_auto_is_bitwise_identical(fsdp2_2ranks, tmp_path):
    result = train(tmp_path, RUN + FSDP2, nproc=2, check=False, env={"LLAMA_TRAINER_FAULT": "kill@step=5"})
    assert result.returncode != 0
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]
    assert sorted(p.name for p in (tmp_path / "checkpoint-3" / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    train(tmp_path, RUN + FSDP2 + ["resume=auto"], nproc=2)
    assert "at step 3" in (tmp_path / "logs" / "rank0.log").read_text()
    a, b = losses(fsdp2_2ranks), losses(tmp_path)
    assert sorted(b) == list(range(1, STEPS + 1)) and [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]
    weights_a = load_file(fsdp2_2ranks / f"checkpoint-{STEPS}" / "model.safetensors")
    weights_b = load_file(tmp_path / f"checkpoint-{STEPS}" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_resume_on_another_world_size(fsdp2_2ranks, tmp_path):
    """DCP re-shards the 2-rank optimizer and weights onto 1 rank."""
    shutil.copytree(fsdp2_2ranks / "checkpoint-6", tmp_path / "checkpoint-6")
    train(tmp_path, RUN + FSDP2 + ["resume=auto"], nproc=1)
    assert "saved at world size 2, now 1" in (tmp_path / "logs" / "rank0.log").read_text()
    assert sorted(losses(tmp_path)) == [7, 8]
    assert_close(losses(tmp_path), losses(fsdp2_2ranks), 1e-5, [7, 8])


def test_lora_with_gradient_checkpointing_matches_deepspeed(tmp_path):
    lora, overrides = ("conf/demo", "lora"), FAST + ["max_steps=6"]
    train(tmp_path / "fsdp2", overrides + FSDP2 + ["model.gradient_checkpointing=true"], nproc=2, config=lora)
    train(tmp_path / "zero3", overrides + ZERO3, nproc=1, config=lora)
    assert_close(losses(tmp_path / "fsdp2"), losses(tmp_path / "zero3"), 1e-4, range(1, 7))
    checkpoint = tmp_path / "fsdp2" / "checkpoint-6"
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert (checkpoint / "merged" / "model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()


def test_nan_guard_skips_like_deepspeed(tmp_path):
    """A NaN at step 3: the update and the learning-rate schedule skip that step under both engines."""
    nan = FAST + ["model._target_=tests.nan_injection.load_with_nan_on_calls", "+model.nan_calls=[3]",
                  "max_steps=5", "per_gpu_train_batch_size=4"]
    run_trainer(tmp_path / "fsdp2", nan + FSDP2)
    run_trainer(tmp_path / "zero3", nan + ZERO3)
    fsdp2, zero3 = read_scalars(tmp_path / "fsdp2"), read_scalars(tmp_path / "zero3")
    assert [s for s, _ in fsdp2["train/nan_skips"]] == [s for s, _ in zero3["train/nan_skips"]] == [3]
    assert [lr for _, lr in fsdp2["train/lr"]] == pytest.approx([lr for _, lr in zero3["train/lr"]], rel=1e-6)
    a, b = dict(fsdp2["train/loss"]), dict(zero3["train/loss"])
    assert a[3] != a[3] and b[3] != b[3]
    assert_close(a, b, 1e-4, [1, 2, 4, 5])


def test_generation_during_training_on_two_ranks_gives_the_exported_models_answers(fsdp2_2ranks, tmp_path):
    """The 2-rank evaluation (FSDP2 generate, synced) predicts what the exported checkpoint does on one process."""
    from general_util.dist import init_distributed
    from modules.loss_impl import LossSettings
    from transformers import AutoModelForCausalLM
    init_distributed()
    cfg = compose_config(FSDP2 + EVAL, output_dir=tmp_path)
    tokenizer = instantiate(cfg.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(fsdp2_2ranks / f"checkpoint-{STEPS}").eval()
    instantiate(cfg.evaluators.c3_d)(model, tokenizer, tmp_path / "c3_d", LossSettings(cfg.loss_impl, cfg.loss_chunk_tokens))

    def generations(folder):
        return [json.loads(line)["generation"] for line in (folder / "predictions.jsonl").read_text().splitlines()]

    during_training = generations(fsdp2_2ranks / "eval" / f"step-{STEPS}" / "c3_d")
    assert len(during_training) == 7 and during_training == generations(tmp_path / "c3_d")


def test_convert_reads_the_dcp_state(fsdp2_2ranks, tmp_path):
    checkpoint = fsdp2_2ranks / f"checkpoint-{STEPS}"
    result = run_script("-m models.convert", ["zero-to-hf", str(checkpoint), str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr[-3000:]
    converted, exported = load_file(tmp_path / "hf" / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert converted.keys() == exported.keys() and all(torch.equal(converted[k], exported[k]) for k in exported)


def test_hf_export_has_the_engines_logits_and_the_fsdp2_settings_train_the_same(tmp_path):
    """In-process, one rank, a new pad token (the embeddings grow before sharding): the exported checkpoint
    reloaded with from_pretrained computes the engine's logits; CPU offload and keeping the gathered layers
    (reshard_after_forward=false) train exactly as the defaults; bf16 and fp16 train close to fp32 and the
    export is in the training dtype."""
    from transformers import AutoModelForCausalLM

    from general_util.dist import init_distributed
    from trainer import TrainerHooks, build_trainer
    ctx = init_distributed()
    logged = {}

    def trained(name: str, settings: list[str]):
        cfg = compose_config(FAST + FSDP2 + ["max_steps=2", "tokenizer.pad_token='[PAD]'"] + settings,
                             output_dir=tmp_path / name)
        hooks = TrainerHooks(on_log=lambda step, values: logged.setdefault(name, []).append(values["train/loss"]))
        trainer = build_trainer(cfg, ctx, hooks=hooks)
        trainer.run()
        return trainer

    trainer = trained("offload", ["engine.cpu_offload=true"])
    trained("kept", ["engine.reshard_after_forward=false"])
    trained("default", [])
    for precision in ("bf16", "fp16"):  # fp32 master weights, 16-bit compute (fp16: with ShardedGradScaler)
        trained(precision, [f"precision={precision}"])
    assert len(logged["default"]) == 2
    assert logged["offload"] == pytest.approx(logged["default"], rel=1e-6)
    assert logged["kept"] == pytest.approx(logged["default"], rel=1e-6)
    for precision in ("bf16", "fp16"):  # close to fp32, and computed in 16 bits
        assert logged[precision] == pytest.approx(logged["default"], rel=1e-3) and logged[precision] != logged["default"]
    assert load_file(tmp_path / "bf16" / "checkpoint-2" / "model.safetensors")["lm_head.weight"].dtype == torch.bfloat16
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "offload" / "checkpoint-2").eval()
    assert exported.config.vocab_size == len(trainer.tokenizer) == 1025
    input_ids = torch.tensor([[1, 300, 301, 302, 1024, 2]])
    trainer.engine.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids).logits, trainer.engine.model(input_ids=input_ids).logits,
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("overrides, world_size, message", [
    (FSDP2 + ["deepspeed@ds_cfg=zero3_offload", "~ds_cfg.zero_optimization.offload_param"], 1,
     "ds_cfg.zero_optimization.offload_optimizer.device=cpu: engine=fsdp2 offloads parameters, gradients and optimizer "
     "states together"),
    (FSDP2 + ["sequence_parallel_size=2"], 2, "sequence_parallel_size=2: DeepSpeed Ulysses sequence parallelism needs"),
    (FSDP2 + ["torch_adam=true"], 1, "torch_adam=True: chooses DeepSpeed's Adam"),
    (["++engine.cpu_offload=true"], 1, "engine.cpu_offload=True: a setting of engine=fsdp2, not of "
     "training.deepspeed_engine.DeepSpeed; select engine=fsdp2 or remove it"),
])
def test_preflight_refuses_the_other_engines_settings(overrides, world_size, message):
    from training.config import validate
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config(overrides, output_dir=REPO / "unused"), world_size)
    validate(compose_config(FSDP2 + ["engine.cpu_offload=true"], output_dir=REPO / "unused"), 1)


def test_a_failed_dcp_write_is_recorded_for_the_save_to_fail_on_every_rank(tmp_path):
    """DCP wraps each rank's write error into one CheckpointException (a BaseException): the engine unwraps the
    write failure so that RecordedWrites keeps it and training/saving.py fails the save cleanly."""
    from training.fsdp2_engine import save_state
    from training.saving import RecordedWrites
    (tmp_path / "a_file").write_text("not a folder")
    writes = RecordedWrites()
    writes.run(save_state, {"model": {"weight": torch.zeros(3)}}, tmp_path / "a_file" / "dcp")
    assert isinstance(writes.failure, NotADirectoryError)


# a sitecustomize that makes `deepspeed` look not installed: no finder finds it (import fails, find_spec is None)
WITHOUT_DEEPSPEED = '''
import sys
from importlib.machinery import PathFinder


class WithoutDeepSpeed(PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        return None if fullname.split(".")[0] == "deepspeed" else super().find_spec(fullname, path, target)


sys.meta_path[:] = [WithoutDeepSpeed if finder is PathFinder else finder for finder in sys.meta_path]
'''


def test_fsdp2_trains_and_saves_where_deepspeed_cannot_be_imported(tmp_path):
    """Two torchrun ranks of engine=fsdp2 with DeepSpeed hidden: the process group, the engine, the DCP and
    Hugging Face checkpoints need none of it; the ZeRO engine says in one line that it is missing."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_DEEPSPEED)
    env = {"PYTHONPATH": f"{site}:{REPO}"}
    hidden = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('deepspeed')); "
                             "import deepspeed"], cwd=REPO, env=child_env(**env), capture_output=True, text=True)
    assert hidden.stdout.strip() == "None" and "No module named 'deepspeed'" in hidden.stderr
    out = tmp_path / "out"
    run_trainer(out, FAST + FSDP2 + ["max_steps=4", "save_steps=2", "per_gpu_train_batch_size=2"],
                launcher="torchrun", nproc=2, env=env)
    assert (out / "checkpoint-4" / "dcp").is_dir() and (out / "checkpoint-4" / "model.safetensors").is_file()
    assert len(losses(out)) == 4
    refused = run_trainer(tmp_path / "zero", FAST + ["max_steps=1"], launcher="python", env=env, check=False)
    assert refused.returncode == 2 and "engine=deepspeed: DeepSpeed is not installed here" in refused.stderr
