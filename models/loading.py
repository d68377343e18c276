"""Tokenizer and causal-LM loading from local Hugging Face folders (never from a hub)."""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from general_util.paths import resolve_path
from general_util.errors import ConfigError
from models.lora import adapter_tokenizer, apply_lora, is_adapter_dir, load_adapter_model
from models.model_dir import local_model_dir
from models.vocab import apply_freeze_strategy, extend_vocabulary, resize_with_mean_rows
from models.weights_io import DTYPES


PAD_NAMES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]")  # pad tokens some vocabularies reserve


def existing_pad_token(tokenizer) -> str:
    """A token the vocabulary already has, to pad with at no cost (no new embedding or lm_head row that would
    enter every softmax): `<unk>` (LLaMA-1/2 and their Chinese derivatives), else a reserved pad token
    (Llama-3.1's `<|finetune_right_pad_id|>`), else the first reserved special token (Llama-3's
    `<|reserved_special_token_0|>`), else EOS. Padding never reaches a label (see data/collators.py)."""
    vocabulary = tokenizer.get_vocab()
    reserved = sorted((token for token in vocabulary if "reserved" in token and token.startswith("<|")),
                      key=vocabulary.get)
    for token in (tokenizer.unk_token, *PAD_NAMES, *reserved[:1], tokenizer.eos_token):
        if token is not None and token in vocabulary:
            return token
    raise ConfigError("tokenizer.pad_token=auto: the tokenizer has no <unk>, reserved or EOS token to pad with; "
                      "name a pad token to add (e.g. tokenizer.pad_token='[PAD]')")


def load_tokenizer(name_or_path: str, pad_token: str | None = "auto", trust_remote_code: bool = False,
                   extra_tokens_file: str | None = None, merge_tokenizer: str | None = None,
                   chat_template: str | None = None):
    """The tokenizer, with a pad token, the optional vocabulary extension (`load_causal_lm` grows the model's
    embeddings to match) and an optional chat template (a Jinja file, or the template text) replacing the
    model folder's. `pad_token`: `auto` keeps the tokenizer's own pad or reuses a token it has
    (`existing_pad_token`); a name is reused when the vocabulary has it and added as a new row otherwise (the
    original recipes' `[PAD]`); None leaves a tokenizer without pad as it is."""
    tokenizer = AutoTokenizer.from_pretrained(local_model_dir(name_or_path), trust_remote_code=trust_remote_code)
    if chat_template:
        path = resolve_path(chat_template)
        tokenizer.chat_template = path.read_text(encoding="utf-8") if path.is_file() else chat_template
    if tokenizer.pad_token is None and pad_token:
        if pad_token == "auto":
            tokenizer.pad_token = existing_pad_token(tokenizer)
        elif pad_token in tokenizer.get_vocab():
            tokenizer.pad_token = pad_token
        else:
            tokenizer.add_special_tokens({"pad_token": pad_token})
    if extra_tokens_file or merge_tokenizer:
        extend_vocabulary(tokenizer, extra_tokens_file, merge_tokenizer)
    return tokenizer


def quantization_config(dtype: torch.dtype):
    """QLoRA's 4-bit NF4 weights with double quantisation, computing in the training dtype."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def load_causal_lm(name_or_path: str, torch_dtype: str, attn_implementation: str = "sdpa",
                   gradient_checkpointing: bool = False, trust_remote_code: bool = False, tokenizer=None,
                   use_peft: bool = False, lora_config: dict | None = None, load_in_4bit: bool = False,
                   freeze_strategy: str = "none", train_norms: bool = False):
    """The model for training (or evaluation). `name_or_path` may also be an adapter folder written by a LoRA
    run: its base model is loaded with the adapter on top. The keyword arguments are the `model:` keys
    documented in conf/model/llama.yaml."""
    if torch_dtype not in DTYPES:
        raise ConfigError(f"model.torch_dtype={torch_dtype!r}: use one of {sorted(DTYPES)}")
    dtype = DTYPES[torch_dtype]
    if is_adapter_dir(resolve_path(name_or_path)):
        return load_adapter_model(resolve_path(name_or_path), dtype, tokenizer, is_trainable=use_peft)
    model = AutoModelForCausalLM.from_pretrained(
        local_model_dir(name_or_path), dtype=dtype, attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, quantization_config=quantization_config(dtype) if load_in_4bit else None)
    if tokenizer is not None:
        resize_with_mean_rows(model, len(tokenizer))
        model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # no KV cache in training
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if use_peft:
        model = apply_lora(model, lora_config, gradient_checkpointing, quantized=load_in_4bit)
    apply_freeze_strategy(model, freeze_strategy, train_norms)
    return model


def load_for_inference(path: str, dtype: str = "fp32"):
    """(model, tokenizer) in eval mode from a full or merged Hugging Face folder or a LoRA adapter folder
    (base model from its adapter_config.json); the tokenizer saved next to the weights wins over the base's."""
    folder = resolve_path(path)
    if is_adapter_dir(folder):
        tokenizer = adapter_tokenizer(folder)
        model = load_adapter_model(folder, DTYPES[dtype], tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(local_model_dir(path))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
    return model.eval(), tokenizer
