"""Unusable configs stop before any model is loaded, with one line naming the key, and exit ≠ 0."""
import pytest

from general_util.cli import legacy_overrides
from training.config import validate
from general_util.errors import UserError, one_line
from tests.trainer_runs import FAST, compose_config, run_trainer, train_in_process

BAD_CONFIGS = {
    "missing train file": (["train_file=data/samples/nope.jsonl"], "train_file="),
    "unknown top-level key": (["+lerning_rate=1e-4"], "unknown top-level key 'lerning_rate'; did you mean 'learning_rate'?"),
    "batch mismatch with ds_cfg": (["ds_cfg.train_micro_batch_size_per_gpu=3"], "ds_cfg.train_micro_batch_size_per_gpu=3"),
    "accumulation mismatch with ds_cfg": (["ds_cfg.gradient_accumulation_steps=5"], "ds_cfg.gradient_accumulation_steps=5"),
    "train_batch_size mismatch": (["+ds_cfg.train_batch_size=7"], "ds_cfg.train_batch_size=7"),
    "save_best without save_steps": (["save_best=true", "save_steps=0"], "save_steps=0"),
    "eval_steps not set": (["evaluate_during_training=true", "eval_steps=0"], "eval_steps=0"),
    "missing model": (["model_name_or_path=/nonexistent/model"], "model_name_or_path='/nonexistent/model'"),
    "unknown precision": (["precision=fp8"], "precision='fp8'"),
    "the old packed collator stanza": (["collator._target_=data.collators.PackedCollator"],
                                       "collator._target_=data.collators.PackedCollator: the collator is picked by the "
                                       "data node's packing now; remove the collator's _target_ and attn_implementation "
                                       "and set train_dataset.packing: true"),
    "packing set on the collator": (["collator.packing=true"],
                                    "collator.packing=True: follows train_dataset.packing (false); set that instead"),
    "packed rows for another attention": (["collator.attn_implementation=eager"],
                                          "collator.attn_implementation='eager': follows the model's ('sdpa')"),
    "embeddings-only stage with LoRA": (["model.use_peft=true", "model.freeze_strategy=embeddings_only"],
                                        "model.freeze_strategy='embeddings_only': LoRA already freezes"),
    "save_merged without LoRA": (["save_merged=true"], "save_merged=True: only a LoRA run"),
    "liger loss on CPU": (["loss_impl=liger"], "loss_impl='liger': Liger-Kernel's Triton kernels need a CUDA GPU"),
    "unknown loss_impl": (["loss_impl=fused"], "loss_impl='fused': use one of auto, full, chunked, liger"),
    "loss slices of no tokens": (["loss_chunk_tokens=0"], "loss_chunk_tokens=0: must be ≥ 1"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_by_preflight(name):
    """`validate` (the preflight `trainer.run` calls first) refuses the config with one line naming the key."""
    overrides, expected = BAD_CONFIGS[name]
    with pytest.raises(UserError) as refused:
        validate(compose_config(overrides), world_size=1)
    line = one_line(refused.value)
    assert len(line.splitlines()) == 1 and line.startswith("error: ") and expected in line, line


def test_a_moved_key_names_its_new_place():
    """`model.loss_impl` and `model.loss_chunk_tokens` are top-level keys now. Written as before on the command
    line (as Hydra overrides or the old `--key=value`, which Hydra alone would refuse with its multi-line error:
    the config has no such key) they reach the preflight, as from a task YAML, and it names the new key."""
    argv = ["trainer.py", "model.loss_impl=chunked", "--model.loss_chunk_tokens=64"]
    with pytest.raises(UserError) as refused:
        validate(compose_config(legacy_overrides(argv)[0][1:]), world_size=1)
    assert one_line(refused.value) == (
        "error: model.loss_chunk_tokens: now the top-level key 'loss_chunk_tokens'; write loss_chunk_tokens=64; "
        "model.loss_impl: now the top-level key 'loss_impl'; write loss_impl=chunked")


def test_bad_config_stops_the_trainer_before_set_up(tmp_path):
    """The command-line contract, once through the real entry point: exit 2, one line, no traceback, nothing
    set up (no logs folder)."""
    result = run_trainer(tmp_path / "out", BAD_CONFIGS["batch mismatch with ds_cfg"][0], launcher="python", check=False)
    assert result.returncode == 2
    stderr = result.stderr.strip()
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ds_cfg.train_micro_batch_size_per_gpu=3"), stderr
    assert not (tmp_path / "out" / "logs").exists()


def test_dry_run_prints_the_plan(tmp_path, capsys):
    train_in_process(tmp_path, FAST + ["dry_run=true", "per_gpu_train_batch_size=4", "num_train_epochs=2"])
    result = capsys.readouterr()
    assert "parameters: 231,744" in result.out  # the tiny LLaMA's size, from its config alone
    assert "samples: 148; micro-batches per rank per epoch: 37; optimizer steps: 74" in result.out
    # fp32: 4 bytes of weights and 4 of gradients, 8 of Adam states per parameter
    assert ("per-GPU memory estimate (ZeRO-1, fp32, world 1, activations excluded): weights 905.2 KiB, "
            "gradients 905.2 KiB, optimizer 1.8 MiB, total 3.5 MiB") in result.out
    assert "learning_rate: 0.003" in result.out  # the resolved config
    assert not list(tmp_path.glob("checkpoint-*"))


@pytest.mark.parametrize("packing, attention, expected", [(True, "eager", "PackedCollator"),
                                                          (False, "sdpa", "PaddingCollator")])
def test_the_data_nodes_packing_alone_picks_the_collator(packing, attention, expected):
    """No collator stanza: `train_dataset.packing` picks PackedCollator, for the model's attention implementation."""
    from hydra.utils import instantiate

    cfg = compose_config([f"train_dataset.packing={str(packing).lower()}", f"model.attn_implementation={attention}"])
    validate(cfg, world_size=1)
    collator = instantiate(cfg.collator, tokenizer=instantiate(cfg.tokenizer))
    assert type(collator).__name__ == expected
    assert getattr(collator, "attn_implementation", attention) == attention
