"""The tokenizer kinds the data tests run on, each built from the publishers' real files in
tests/fixtures/tokenizers/ (see the README there for sources), once per test session.

    tiny_bpe              the project's tiny model's byte-level BPE (models/tiny_llama)
    llama2_legacy         LLaMA-2's SentencePiece tokenizer.model, legacy=True (a `▁` after special tokens)
    llama2                the same, legacy=False (what LLaMA-2 checkpoints on the hub use since transformers 4.31)
    chinese_llama2        Chinese-LLaMA-2's 55,296-piece SentencePiece model with its own tokenizer_config.json
    llama3                Llama-3's tiktoken ranks converted by transformers' TikTokenConverter, with the special
                          tokens, BOS post-processor and chat template of Meta-Llama-3-8B-Instruct (built by
                          models/tiny.py `llama3_tokenizer`, as the llama3 model family's with Llama-3.1's specials)
    qwen2                 Qwen's byte-level BPE (Qwen2/2.5/3) with Qwen3's specials and ChatML template: no BOS,
                          EOS <|im_end|>, its own pad <|endoftext|>

Adding a kind is one entry of KINDS (a function returning the tokenizer); `folder(kind)` saves it for
code that loads from a folder (lm-eval's HFLM, generate.py).
"""
import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, LlamaTokenizer

from models.tiny import llama3_tokenizer

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO / "tests" / "fixtures" / "tokenizers"
CHAT_TEMPLATES = REPO / "tests" / "fixtures" / "chat_templates"


def llama3_special_tokens() -> list[str]:
    """Meta-Llama-3-8B-Instruct's 256 special tokens, ids 128000-128255 in this order."""
    named = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>",
             9: "<|eot_id|>"}
    reserved = iter(range(251))
    return [named[i] if i in named else f"<|reserved_special_token_{next(reserved)}|>" for i in range(256)]


def _llama2(legacy: bool):
    return LlamaTokenizer.from_pretrained(str(TOKENIZERS / "llama2"), legacy=legacy, add_bos_token=True,
                                          add_eos_token=False)


KINDS = {
    "tiny_bpe": lambda: AutoTokenizer.from_pretrained(str(REPO / "models" / "tiny_llama")),
    "llama2_legacy": lambda: _llama2(legacy=True),
    "llama2": lambda: _llama2(legacy=False),
    "chinese_llama2": lambda: AutoTokenizer.from_pretrained(str(TOKENIZERS / "chinese_llama2")),
    "llama3": lambda: llama3_tokenizer(special_tokens=llama3_special_tokens(), model_max_length=None),
    "qwen2": lambda: AutoTokenizer.from_pretrained(str(TOKENIZERS / "qwen2")),
}
# kinds whose saved folder reloads with the same encoding (transformers 5.24 drops legacy=True on saving)
FOLDER_KINDS = [kind for kind in KINDS if kind != "llama2_legacy"]


@functools.lru_cache(maxsize=None)
def _built(kind: str):
    return KINDS[kind]()


def tokenizer(kind: str):
    """A fresh copy (tests may set a pad token or a chat template) of the session's tokenizer of `kind`."""
    import copy
    return copy.deepcopy(_built(kind))


_FOLDERS = Path(tempfile.mkdtemp(prefix="tokenizer_kinds_"))
atexit.register(shutil.rmtree, _FOLDERS, True)


@functools.lru_cache(maxsize=None)
def folder(kind: str) -> Path:
    """The tokenizer of `kind` saved as a Hugging Face folder (once per session), with a config.json (a
    1-layer LLaMA of its vocabulary) so that the project's loaders take the folder as a model folder."""
    from transformers import LlamaConfig

    path = _FOLDERS / kind
    built = _built(kind)
    built.save_pretrained(str(path))
    LlamaConfig(vocab_size=len(built), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, bos_token_id=built.bos_token_id, eos_token_id=built.eos_token_id
                ).to_json_file(str(path / "config.json"))
    return path


def describe(kind: str) -> dict:
    built = _built(kind)
    return {"kind": kind, "size": len(built), "bos": built.bos_token, "eos": built.eos_token,
            "pad": built.pad_token, "unk": built.unk_token, "legacy": getattr(built, "legacy", None)}


if __name__ == "__main__":
    print(json.dumps([describe(kind) for kind in KINDS], indent=1))
