"""LoRA: only the adapter trains (1 and 2 ranks), checkpoints hold the adapter, reload with peft, and the
merged model (trainer's merged/ and `python -m models.merge_lora`) computes what base + adapter does.
QLoRA and flash-attention are refused up front where they cannot run."""
import importlib.util

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from models.loading import load_causal_lm, load_tokenizer
from models.lora import all_linear_names
from models.merge_lora import merge
from modules.loss import token_loss_sum
from tests.forked_ranks import run_script
from tests.trainer_runs import FAST, read_scalars, run_trainer

BASE = "models/tiny_llama"
LORA = ("conf/demo", "lora")
STEPS = 8
TRAIN = FAST + [f"max_steps={STEPS}", "model.gradient_checkpointing=true", "model.lora_config.dropout=0.0"]
INPUT_IDS = torch.tensor([[1, 300, 301, 302, 303, 304, 2]])
PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_all_linear_means_every_projection_but_the_head():
    assert all_linear_names(AutoModelForCausalLM.from_pretrained(BASE)) == PROJECTIONS


def test_only_adapter_weights_train_and_get_gradients_under_checkpointing():
    tokenizer = load_tokenizer(BASE, pad_token="<unk>")
    model = load_causal_lm(BASE, "fp32", tokenizer=tokenizer, gradient_checkpointing=True, use_peft=True,
                           lora_config={"target_modules": "all-linear", "r": 4, "alpha": 8, "dropout": 0.0})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == set(PROJECTIONS)
    model.train()
    token_loss_sum(model(input_ids=INPUT_IDS).logits, INPUT_IDS).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_B." in n)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(INPUT_IDS).logits


def assert_lora_run(output_dir, tmp_path, command_line=False):
    """`command_line`: merge with `python -m models.merge_lora` in a subprocess, as users do (else its `merge`)."""
    losses = [value for _, value in read_scalars(output_dir)["train/loss"]]
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.1, losses
    checkpoint = output_dir / f"checkpoint-{STEPS}"
    assert not (checkpoint / "model.safetensors").exists()
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if ".lora_B." in k)  # B starts at 0: it trained
    # the engine's full state: every base weight bitwise as loaded, the adapter as saved
    engine = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    base = load_file(f"{BASE}/model.safetensors")
    base_in_engine = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in engine.items()
                      if ".lora_" not in k}
    assert base_in_engine.keys() == base.keys()
    assert all(torch.equal(base_in_engine[k], base[k]) for k in base)
    for key, tensor in adapter.items():
        assert torch.equal(engine[key.replace(".weight", ".default.weight")], tensor), key

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), checkpoint)
    expected = logits(reloaded)
    assert not torch.allclose(expected, logits(AutoModelForCausalLM.from_pretrained(BASE)), atol=1e-4)
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(checkpoint / "merged")), expected,
                               atol=1e-5, rtol=0)
    if command_line:
        result = run_script("-m models.merge_lora", [BASE, str(checkpoint), str(tmp_path / "cli")], timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        merge(BASE, str(checkpoint), str(tmp_path / "cli"))
    assert (tmp_path / "cli" / "model.safetensors").is_file() and (tmp_path / "cli" / "tokenizer.json").is_file()
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "cli")), expected,
                               atol=1e-5, rtol=0)


@pytest.mark.slow
def test_lora_one_rank(tmp_path):
    run_trainer(tmp_path / "run", TRAIN + ["per_gpu_train_batch_size=4"], config=LORA)
    assert_lora_run(tmp_path / "run", tmp_path, command_line=True)


@pytest.mark.slow
def test_lora_two_ranks(tmp_path):
    run_trainer(tmp_path / "run", TRAIN + ["per_gpu_train_batch_size=2"], config=LORA, nproc=2)
    assert_lora_run(tmp_path / "run", tmp_path)


REFUSED = {
    "qlora on cpu": ("model.load_in_4bit=true", "model.load_in_4bit=True: QLoRA (4-bit bitsandbytes weights) needs a "
                                                "CUDA GPU and bitsandbytes", torch.cuda.is_available()),
    "flash attention missing": ("model.attn_implementation=flash_attention_2", "flash_attn is not installed",
                                importlib.util.find_spec("flash_attn") is not None),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_one_line(tmp_path, name):
    override, message, runnable_here = REFUSED[name]
    if runnable_here:
        pytest.skip("this machine can run it")
    result = run_trainer(tmp_path, [override], config=LORA, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr
