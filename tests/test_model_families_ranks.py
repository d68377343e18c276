"""Each tiny model family (models/tiny.py FAMILIES) trains with packing on 2 ranks under both engines: DeepSpeed
ZeRO-3 (killed after step 3, resumed from checkpoint-2 with resume=auto: step 3 again gives the loss it gave
before the kill) and FSDP2 (uninterrupted), which agree on every step's loss within 1e-4; both export a Hugging
Face folder that from_pretrained loads. Qwen3-MoE: the expert blocks are ZeRO-3 leaf modules and train/aux_loss
is logged under both engines. In-process checks of each family: test_model_families.py."""
import re

import pytest
from transformers import AutoModelForCausalLM

from models.tiny import FAMILIES
from tests.families import family_overrides
from tests.trainer_runs import FAST, read_scalars, run_trainer

pytestmark = pytest.mark.slow
STEPS = 4
RUN = FAST + [f"max_steps={STEPS}", "save_steps=2", "per_gpu_train_batch_size=1", "gradient_accumulation_steps=2"]
ENGINES = {"zero3": ["deepspeed@ds_cfg=zero3"], "fsdp2": ["engine=fsdp2"]}


def logged_losses(output_dir, step: int) -> list[str]:
    """The loss of `step` in every rank-0 log line of the run folder's launches, as logged (6 digits)."""
    text = (output_dir / "logs" / "rank0.log").read_text()
    return re.findall(rf"step {step}/{STEPS} epoch \d+ loss=(\S+)", text)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_two_ranks_both_engines_resume_and_export(name, tmp_path):
    zero3, fsdp2 = tmp_path / "zero3", tmp_path / "fsdp2"
    args = RUN + family_overrides(name)
    killed = run_trainer(zero3, args + ENGINES["zero3"], nproc=2, check=False,
                         env={"LLAMA_TRAINER_FAULT": "kill@step=3"})
    assert killed.returncode != 0 and sorted(p.name for p in zero3.glob("checkpoint-*")) == ["checkpoint-2"]
    run_trainer(zero3, args + ENGINES["zero3"] + ["resume=auto"], nproc=2)
    run_trainer(fsdp2, args + ENGINES["fsdp2"] + [f"save_steps={STEPS}"], nproc=2)  # its last checkpoint is the one checked
    before_kill, resumed = logged_losses(zero3, 3)
    assert before_kill == resumed  # the resumed step 3 is the one the killed run took
    losses = {engine: dict(read_scalars(tmp_path / engine)["train/loss"]) for engine in ENGINES}
    assert sorted(losses["fsdp2"]) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert losses["zero3"][step] == pytest.approx(losses["fsdp2"][step], rel=1e-4), step
    assert losses["fsdp2"][STEPS] < losses["fsdp2"][1]
    for engine in ENGINES:
        model = AutoModelForCausalLM.from_pretrained(tmp_path / engine / f"checkpoint-{STEPS}")
        assert model.config.model_type == AutoModelForCausalLM.from_pretrained(family_overrides(name)[0].split("=", 1)[1]).config.model_type
    if name == "qwen3_moe":
        assert "ZeRO-3 leaf modules: Qwen3MoeSparseMoeBlock" in (zero3 / "logs" / "rank0.log").read_text()
        for engine in ENGINES:
            aux = dict(read_scalars(tmp_path / engine)["train/aux_loss"])
            assert sorted(aux) == list(range(1, STEPS + 1)) and all(value > 0 for value in aux.values())
