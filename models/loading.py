"""Tokenizer and causal-LM loading from local Hugging Face folders (never from a hub)."""
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.paths import resolve_path

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def local_model_dir(name_or_path: str) -> Path:
    path = resolve_path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model_name_or_path={name_or_path!r} is not a local model folder with a config.json "
                                f"(this trainer never downloads from a hub)")
    return path


def load_tokenizer(name_or_path: str, pad_token: str | None = None, trust_remote_code: bool = False):
    """The tokenizer, with a pad token: an existing token reused, or a new one added (the model's
    embeddings are then resized by `load_causal_lm`)."""
    tokenizer = AutoTokenizer.from_pretrained(local_model_dir(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and pad_token:
        if pad_token in tokenizer.get_vocab():
            tokenizer.pad_token = pad_token
        else:
            tokenizer.add_special_tokens({"pad_token": pad_token})
    return tokenizer


def resize_embeddings(model, new_size: int) -> None:
    """Grow embed_tokens / lm_head to `new_size` rows; new rows start at the mean of the old ones."""
    old_size = model.get_input_embeddings().weight.shape[0]
    if new_size <= old_size:
        return
    model.resize_token_embeddings(new_size, mean_resizing=True)


def load_causal_lm(name_or_path: str, torch_dtype: str = "fp32", attn_implementation: str = "sdpa",
                   gradient_checkpointing: bool = False, trust_remote_code: bool = False, tokenizer=None):
    if torch_dtype not in DTYPES:
        raise ValueError(f"model.torch_dtype={torch_dtype!r}: use one of {sorted(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(local_model_dir(name_or_path), dtype=DTYPES[torch_dtype],
                                                 attn_implementation=attn_implementation,
                                                 trust_remote_code=trust_remote_code)
    if tokenizer is not None:
        resize_embeddings(model, len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # no KV cache in training
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model
