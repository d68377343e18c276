"""LoRA / QLoRA adapters via peft: wrapping a model for training, merging, and loading adapter folders."""
import json
from pathlib import Path

import torch
from torch import nn

from models.model_dir import local_model_dir

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter was trained on (as recorded in its adapter_config.json)."""
    return json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def all_linear_names(model: nn.Module) -> list[str]:
    """Names (last component) of every linear layer except the output head: what `target_modules:
    all-linear` means. 4-bit bitsandbytes layers count as linear too."""
    output = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module is not output}
    return sorted(names)


def apply_lora(model, lora_config: dict, gradient_checkpointing: bool, quantized: bool = False):
    """The model wrapped in a trainable LoRA adapter (all base weights frozen). `lora_config` holds
    target_modules ("all-linear" or a list), r, alpha, dropout."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    if quantized:  # fp32 norms and head, frozen 4-bit weights; checkpointing is already set by the caller
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        # checkpointed blocks need an input that requires grad, which frozen embeddings no longer give
        model.enable_input_require_grads()
    targets = lora_config["target_modules"]
    config = LoraConfig(task_type="CAUSAL_LM", r=lora_config["r"], lora_alpha=lora_config["alpha"],
                        lora_dropout=lora_config["dropout"],
                        target_modules=all_linear_names(model) if targets == "all-linear" else list(targets))
    return get_peft_model(model, config)


def merged_copy(peft_model, state_dict: dict):
    """A plain (non-peft) model with the adapter merged into its weights, built on the CPU from `state_dict`
    (the full state of `peft_model`), so the training model itself stays untouched."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    base_config = peft_model.get_base_model().config
    copy = get_peft_model(AutoModelForCausalLM.from_config(base_config), peft_model.peft_config["default"])
    copy.load_state_dict(state_dict)
    return copy.merge_and_unload().to(next(iter(state_dict.values())).dtype)


def adapter_tokenizer(adapter_dir: Path, base: str | None = None):
    """The tokenizer saved with the adapter (it may carry an extended vocabulary), else the base model's."""
    from transformers import AutoTokenizer

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(adapter_dir)
    return AutoTokenizer.from_pretrained(local_model_dir(base or adapter_base(adapter_dir)))


def load_adapter_model(adapter_dir: Path, dtype: torch.dtype = torch.float32, tokenizer=None, is_trainable=False,
                       base: str | None = None):
    """`base` (default: the base named by the adapter's config), its embeddings grown to `tokenizer` when the
    vocabulary was extended, with the adapter of `adapter_dir` loaded on top."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from models.vocab import resize_with_mean_rows
    model = AutoModelForCausalLM.from_pretrained(local_model_dir(base or adapter_base(adapter_dir)), dtype=dtype)
    if tokenizer is not None:
        resize_with_mean_rows(model, len(tokenizer))
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
