"""Build the tiny LLaMA used by the demo, the tests and the benchmarks.

Everything is made locally: a byte-level BPE tokenizer trained on the bundled samples (LLaMA's
special tokens, BOS added by default, no pad token) and a randomly initialised `LlamaForCausalLM`.
The result is shipped in `models/tiny_llama/`; rebuild it with

    python -m models.tiny --out models/tiny_llama
"""
import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
SHIPPED = Path(__file__).resolve().parent / "tiny_llama"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    args = parser.parse_args()
    path = build(args.out, args.vocab_size, hidden_size=args.hidden_size, num_layers=args.num_layers)
    print(f"tiny LLaMA written to {path}")


if __name__ == "__main__":
    main()
