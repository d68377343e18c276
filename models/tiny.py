"""Build the tiny random models used by the demo, the tests and the benchmarks.

The bundled tiny LLaMA (`models/tiny_llama/`): a byte-level BPE tokenizer trained on the bundled samples (LLaMA's
special tokens, BOS added by default, no pad token) and a randomly initialised `LlamaForCausalLM`; rebuild it with

    python -m models.tiny --out models/tiny_llama

The model families (`--family`, FAMILIES): each family's published config.json (tests/fixtures/model_configs/,
sources in its README) scaled down to two layers of width 8 (`scaled_config`: every architectural switch
kept, the vocabulary too) with the family's real tokenizer (tests/fixtures/tokenizers/), e.g.

    python -m models.tiny --family qwen2.5 --out /tmp/tiny_qwen2.5
"""
import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

from models.vocab import save_tokenizer

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
SHIPPED = Path(__file__).resolve().parent / "tiny_llama"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def sample_texts() -> list[str]:
    """Every string in the bundled samples: the tokenizer's training corpus."""
    texts = []
    for path in sorted(SAMPLES.rglob("*")):
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                texts.extend(str(v) for v in json.loads(line).values() if isinstance(v, str))
        elif path.suffix in {".json", ".txt", ".csv"}:
            texts.append(path.read_text(encoding="utf-8"))
    return texts


def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample_texts(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Like LLaMA: `add_special_tokens=True` prepends BOS and nothing else.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=2048, padding_side="right")


def build_model(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                intermediate_size: int = 176, max_position_embeddings: int = 2048, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=max_position_embeddings, bos_token_id=1, eos_token_id=2,
                         pad_token_id=None, tie_word_embeddings=False, torch_dtype="float32")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build(out: Path, vocab_size: int = 1024, **model_kwargs) -> Path:
    tokenizer = build_tokenizer(vocab_size)
    model = build_model(len(tokenizer), **model_kwargs)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# ---- real tokenizers ---------------------------------------------------------------------------------
# Llama-3's tiktoken split pattern and its 256 special tokens after the 128,000 ranks, as Meta's reference
# tokenizer defines them (meta-llama/llama-models@a946b74, models/llama3/tokenizer.py).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_NAMED_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                               "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                               "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                               "<|python_tag|>", "<|image|>"]
LLAMA3_SPECIAL_TOKENS = LLAMA3_NAMED_SPECIAL_TOKENS + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_NAMED_SPECIAL_TOKENS))]


def llama3_tokenizer(ranks_file: Path = FIXTURES / "tokenizers" / "llama3" / "tokenizer.model",
                     chat_template: Path | None = FIXTURES / "chat_templates" / "llama3_instruct.jinja",
                     special_tokens: list[str] = LLAMA3_SPECIAL_TOKENS, model_max_length: int | None = 131072):
    """Llama-3's tiktoken ranks as a Hugging Face fast tokenizer (transformers' TikTokenConverter), as the
    published tokenizer.json has it: the 128,000 byte-level BPE tokens, then the 256 `special_tokens` at
    128,000–128,255 (Llama-3.1's by default; Llama-3's name fewer of them), byte-level offsets, BOS
    `<|begin_of_text|>` prepended, EOS `<|end_of_text|>`, no pad token (as Meta's release); `model_max_length`
    131,072 as Llama-3.1's tokenizer_config.json (None: transformers' default, no limit, as Llama-3's)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter
    backend = TikTokenConverter(vocab_file=str(ranks_file), pattern=LLAMA3_PATTERN).converted()
    base = backend.get_vocab_size()
    backend.add_special_tokens(list(special_tokens))
    assert backend.token_to_id(special_tokens[0]) == base, "special tokens must follow the ranks"
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", base)])])
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                        eos_token="<|end_of_text|>", **limit)
    if chat_template is not None:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    return tokenizer


def sentencepiece_tokenizer(model_file: Path = FIXTURES / "tokenizers" / "llama2" / "tokenizer.model"):
    """A LLaMA SentencePiece `tokenizer.model` as transformers loads it from a model folder (LlamaTokenizer:
    BOS prepended, `<unk>`/`<s>`/`</s>`, legacy=False)."""
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(model_file, Path(folder) / "tokenizer.model")
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False}))
        return AutoTokenizer.from_pretrained(folder)


def qwen_tokenizer(folder: Path = FIXTURES / "tokenizers" / "qwen2"):
    """Qwen's byte-level BPE (vocab.json + merges.txt) with its specials and ChatML chat template."""
    return AutoTokenizer.from_pretrained(folder)


# ---- model families ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    config: Path                     # the published config.json
    tokenizer: Callable[[], object]  # builds the family's real tokenizer


CONFIGS = FIXTURES / "model_configs"
FAMILIES = {
    "llama2": Family(CONFIGS / "llama2" / "config.json", sentencepiece_tokenizer),
    "llama3": Family(CONFIGS / "llama3" / "config.json", llama3_tokenizer),
    "qwen2.5": Family(CONFIGS / "qwen2.5" / "config.json", qwen_tokenizer),
    "qwen3": Family(CONFIGS / "qwen3" / "config.json", qwen_tokenizer),
    # Mistral-7B-v0.1's own SentencePiece model is not in any repository the fixtures came from; LLaMA-2's
    # (the same kind: 32,000 pieces, byte fallback, <unk>/<s>/</s> at 0-2) stands in for it
    "mistral": Family(CONFIGS / "mistral" / "config.json", sentencepiece_tokenizer),
    "qwen3_moe": Family(CONFIGS / "qwen3_moe" / "config.json", qwen_tokenizer),
}
# width 8: the embedding matrices of 128k-152k tokens stay a few MB (they are most of the parameters)
TINY_SIZES = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16}
TINY_MOE = {"num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
            "shared_expert_intermediate_size": 8}
TINY_SLIDING_WINDOW = 16  # a window a test's packed rows are longer than


def scaled_config(published: dict, sizes: dict | None = None) -> dict:
    """`published` with its sizes shrunk (TINY_SIZES; experts TINY_MOE) and everything else kept: the
    vocabulary, tied embeddings, biases, q/k norms, RoPE settings, the router's aux-loss coefficient. Grouped
    KV heads stay grouped (one KV head), an explicit head_dim follows the new width, a sliding window shrinks
    to TINY_SLIDING_WINDOW, and per-layer lists are cut to the new depth."""
    sizes = {**TINY_SIZES, **(sizes or {})}
    config = {k: v for k, v in published.items() if not k.startswith("_")}
    grouped = published.get("num_key_value_heads", published["num_attention_heads"]) < published["num_attention_heads"]
    config.update(sizes)
    config["num_key_value_heads"] = 1 if grouped else sizes["num_attention_heads"]
    if "head_dim" in published:
        config["head_dim"] = sizes["hidden_size"] // sizes["num_attention_heads"]
    config.update({k: v for k, v in TINY_MOE.items() if k in published})
    if published.get("sliding_window") and published.get("use_sliding_window", True):
        config["sliding_window"] = TINY_SLIDING_WINDOW
    if "max_window_layers" in published:
        config["max_window_layers"] = sizes["num_hidden_layers"]
    if "mlp_only_layers" in published:
        config["mlp_only_layers"] = [i for i in published["mlp_only_layers"] if i < sizes["num_hidden_layers"]]
    config["torch_dtype"] = "float32"
    return config


def build_family(name: str, out: Path, seed: int = 0, sizes: dict | None = None) -> Path:
    """The tiny random `name` model (FAMILIES) with its real tokenizer, saved as a Hugging Face folder."""
    family = FAMILIES[name]
    tokenizer = family.tokenizer()
    config = scaled_config(json.loads(family.config.read_text()), sizes)
    if config["vocab_size"] < len(tokenizer):
        raise ValueError(f"{name}: vocab_size {config['vocab_size']} < the tokenizer's {len(tokenizer)} tokens")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument("--family", choices=sorted(FAMILIES), default=None,
                        help="a tiny model of this family (its real config scaled down, its real tokenizer)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    args = parser.parse_args()
    if args.family:
        print(f"tiny {args.family} written to {build_family(args.family, args.out)}")
        return
    path = build(args.out, args.vocab_size, hidden_size=args.hidden_size, num_layers=args.num_layers)
    print(f"tiny LLaMA written to {path}")


if __name__ == "__main__":
    main()
