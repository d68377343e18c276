"""DPO training through the trainer (conf/demo/dpo.yaml, 4 steps, global batch 4 pairs): 2 ranks under ZeRO-3 (the
policy and its frozen reference copy partitioned) equal 1 rank; FSDP2 equals ZeRO-3; a run killed after step 3 and
resumed with resume=auto is bitwise the uninterrupted one; LoRA DPO with the base model as reference trains and
exports; TRL's reward metrics reach the trackers. KTO (conf/demo/kto.yaml) trains on the bundled unpaired examples with
its frozen reference (1 rank, and 2 ranks under ZeRO-3), as a LoRA run with the base as reference."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_runs import FAST, REPO, read_scalars, run_trainer, scalar_values

pytestmark = pytest.mark.slow  # the trainer in forked ranks (pytest.ini's end-to-end tier)
DPO = ("conf/demo", "dpo")
TINY = REPO / "models" / "tiny_llama"
STEPS = 4
STEPS_AND_LENGTH = FAST + [f"max_steps={STEPS}", "train_dataset.max_seq_length=128"]
RUN = STEPS_AND_LENGTH + ["data.cache_dir=null"]
ZERO3 = ["deepspeed@ds_cfg=zero3"]
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


def batch(nproc: int) -> list[str]:
    return [f"per_gpu_train_batch_size={4 // nproc}"]


@pytest.fixture(scope="module")
def zero3_one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_zero3_1")
    run_trainer(out, RUN + ZERO3 + batch(1) + ["do_eval=true", "evaluate_during_training=true", "eval_steps=2"],
                config=DPO)
    return out


def test_the_preference_evaluator_ranks_checkpoints(zero3_one_rank):
    """The held-out pairs' reward accuracy is logged at every evaluation and ranks the steps (prediction_cfg)."""
    scalars = read_scalars(zero3_one_rank)
    assert [step for step, _ in scalars["eval/prefs/accuracy"]] == [2, 4]
    assert all(0 <= value <= 1 for _, value in scalars["eval/prefs/accuracy"])
    assert [value for _, value in scalars["eval/prefs/pairs"]] == [8, 8]
    assert [step for step, _ in scalars["eval/c3_d/acc"]] == [2, 4]  # the benchmark evaluators run unchanged
    best = json.loads((zero3_one_rank / "best_checkpoint.json").read_text())
    assert best["metric"] == "prefs/accuracy" and best["step"] in (2, 4)


def test_two_ranks_zero3_equal_one_rank_and_log_the_reward_metrics(zero3_one_rank, tmp_path):
    run_trainer(tmp_path, RUN + ZERO3 + batch(2), nproc=2, config=DPO)
    one, two = scalar_values(zero3_one_rank), scalar_values(tmp_path)
    assert len(one) == STEPS and one[0] == pytest.approx(0.6931, abs=2e-3)  # log 2: the policy starts as the reference
    assert two == pytest.approx(one, rel=1e-5)
    scalars = read_scalars(zero3_one_rank)
    for name in METRICS:
        assert len(scalars[f"train/{name}"]) == STEPS, name
    assert scalar_values(tmp_path, "train/rewards/margins") == pytest.approx(scalar_values(zero3_one_rank, "train/rewards/margins"),
                                                                      rel=1e-4, abs=1e-6)


def test_fsdp2_equals_zero3(zero3_one_rank, tmp_path):
    run_trainer(tmp_path, RUN + ["engine=fsdp2"] + batch(1), config=DPO)
    assert scalar_values(tmp_path) == pytest.approx(scalar_values(zero3_one_rank), rel=1e-5)


def test_killed_and_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    whole, faulted = tmp_path / "whole", tmp_path / "faulted"
    save = ["save_steps=2"]
    run_trainer(whole, RUN + save + batch(1), config=DPO)
    killed = run_trainer(faulted, RUN + save + batch(1), config=DPO, check=False,
                         env={"LLAMA_TRAINER_FAULT": "kill@step=3"})
    assert killed.returncode == -9
    run_trainer(faulted, RUN + save + batch(1) + ["resume=auto"], config=DPO)
    for tag in ("train/loss", "train/rewards/chosen", "train/logps/rejected"):
        assert dict(read_scalars(faulted)[tag]) == dict(read_scalars(whole)[tag]), tag
    final = [load_file(out / f"checkpoint-{STEPS}" / "model.safetensors") for out in (whole, faulted)]
    assert all((final[0][k] == final[1][k]).all() for k in final[0])


def test_lora_dpo_with_the_base_as_reference_trains_and_exports(tmp_path):
    run_trainer(tmp_path, RUN + batch(1) + ["model.use_peft=true", "model.lora_config.dropout=0.0",
                                           "learning_rate=1e-2", "save_merged=true"], config=DPO)
    losses = scalar_values(tmp_path)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # adapter B = 0: the policy is the base, the reference
    assert len(set(losses)) == STEPS
    checkpoint = tmp_path / f"checkpoint-{STEPS}"
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert any("lora_B" in k for k in adapter) and all(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
    merged, base = load_file(checkpoint / "merged" / "model.safetensors"), load_file(TINY / "model.safetensors")
    assert merged.keys() == base.keys()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


def test_precomputed_reference_equals_the_live_one(tmp_path):
    """(b) == (a): the reference log-probs computed once before training (stored beside the token cache, reused by a
    second run) give the live frozen copy's losses within 1e-6."""
    from tests.objective_runs import logged_values
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    live = logged_values(tmp_path / "live", STEPS_AND_LENGTH + batch(1) + [cache], DPO)
    precomputed = logged_values(tmp_path / "pre", STEPS_AND_LENGTH + batch(1) + ["objective.reference=precomputed", cache], DPO)
    assert len(list((tmp_path / "cache" / "reference_logps").glob("*.npy"))) == 1
    again = logged_values(tmp_path / "again", STEPS_AND_LENGTH + batch(1) + ["objective.reference=precomputed", cache], DPO)
    for name in ("train/loss", "train/rewards/chosen", "train/rewards/margins"):
        assert [v[name] for v in precomputed] == pytest.approx([v[name] for v in live], rel=1e-6, abs=1e-9), name
        assert [v[name] for v in again] == [v[name] for v in precomputed]


KTO = ("conf/demo", "kto")
KTO_METRICS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl")


@pytest.mark.parametrize("lora", [False, True])
def test_kto_trains_on_unpaired_examples_with_its_reference(tmp_path, lora):
    """4 steps of 4 examples: the policy starts as its reference (a frozen copy; LoRA: the base, adapter disabled),
    so every example's loss is 1 - σ(0) = 0.5 at step 1; then it learns; TRL's KTO metrics reach TensorBoard."""
    peft = ["model.use_peft=true", "model.lora_config.dropout=0.0", "learning_rate=1e-2"] if lora else []
    run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=4"] + peft, config=KTO)
    losses = scalar_values(tmp_path)
    assert len(losses) == STEPS and losses[0] == pytest.approx(0.5, abs=1e-6) and len(set(losses)) == STEPS
    scalars = read_scalars(tmp_path)
    for name in KTO_METRICS:
        assert scalars[f"train/{name}"], name
    assert all(value >= 0 for _, value in scalars["train/kl"])
    assert scalars["train/rewards/chosen"][0][1] == pytest.approx(0.0, abs=1e-5)  # β·(log p - ref log p) = 0 at first
    assert any(abs(value) > 1e-4 for _, value in scalars["train/rewards/chosen"][1:])


def test_kto_on_two_ranks_under_zero3(tmp_path):
    """The policy and its frozen reference partitioned over 2 ranks (2 examples per micro-batch each: the KL estimate
    is each micro-batch's, see modules.preference.KTO): it starts at 0.5 and trains."""
    run_trainer(tmp_path, RUN + ZERO3 + ["per_gpu_train_batch_size=2"], nproc=2, config=KTO)
    losses = scalar_values(tmp_path)
    assert len(losses) == STEPS and losses[0] == pytest.approx(0.5, abs=1e-6) and len(set(losses)) == STEPS
    assert all(value >= 0 for value in scalar_values(tmp_path, "train/kl"))
