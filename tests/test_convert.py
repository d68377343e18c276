"""`python -m models.convert zero-to-hf`: a ZeRO-1/2/3 checkpoint, made here by one DeepSpeed training step
on CPU, becomes a folder that `from_pretrained` loads with the engine's exact weights and the tokenizer."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from general_util.dist import init_distributed
from models.convert import main, zero_to_hf
from models.weights_io import SAFETENSORS_INDEX
from training.deepspeed_engine import import_deepspeed

TOKENIZER = "models/tiny_llama"


def ds_config(stage: int) -> dict:
    return {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}


def save_trained_checkpoint(stage: int, root, tokenizer):
    """One training step, then the trainer's layout: checkpoint-1/ = DeepSpeed tag folder + HF config and tokenizer."""
    init_distributed()
    torch.manual_seed(stage)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    engine, *_ = import_deepspeed().initialize(model=model, model_parameters=model.parameters(), config=ds_config(stage))
    input_ids = torch.randint(3, len(tokenizer), (2, 12))
    engine.backward(engine(input_ids=input_ids, labels=input_ids).loss)
    engine.step()
    engine.save_checkpoint(str(root), tag="checkpoint-1")
    checkpoint = root / "checkpoint-1"
    engine.module.config.save_pretrained(checkpoint)
    engine.module.generation_config.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    return engine, checkpoint


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_checkpoint_converts_to_loadable_hf_folder(stage, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    engine, checkpoint = save_trained_checkpoint(stage, tmp_path / "run", tokenizer)
    out = tmp_path / "hf"
    assert main(["zero-to-hf", str(checkpoint), str(out), "--max-shard-size", "40KB"]) == 0

    assert (out / SAFETENSORS_INDEX).is_file() and (out / "generation_config.json").is_file()
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    input_ids = torch.tensor([tokenizer("计算 3 加 5。The capital of France is Paris.")["input_ids"]])
    module = engine.module.eval()
    with import_deepspeed().zero.GatheredParameters(list(module.parameters()), enabled=stage == 3), torch.no_grad():
        expected = module(input_ids=input_ids).logits
        for name, param in module.named_parameters():  # the trained weights, not the initial ones
            torch.testing.assert_close(converted.get_parameter(name), param, rtol=0, atol=0)
    torch.testing.assert_close(converted(input_ids=input_ids).logits, expected, rtol=0, atol=1e-6)


def test_dtype_option_sets_weights_and_config(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    _, checkpoint = save_trained_checkpoint(1, tmp_path / "run", tokenizer)
    zero_to_hf(checkpoint, tmp_path / "hf", dtype="bf16")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto").dtype == torch.bfloat16


def test_not_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["zero-to-hf", str(tmp_path), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model_states.pt" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()
