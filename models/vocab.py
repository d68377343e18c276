"""Vocabulary extension (SentencePiece pieces merged into the model as Chinese-LLaMA-Alpaca does, whole tokens
from a file; new embedding rows at the mean of the old ones) and the embeddings-only training stage that
usually follows it.

Merging. Chinese-LLaMA-Alpaca (scripts/merge_tokenizer/merge_tokenizers.py) appends every piece of a second
SentencePiece model that LLaMA's lacks to LLaMA's model proto, score 0: the new pieces are ordinary pieces of
one SentencePiece model, so they respect word boundaries (`▁primary` stays one piece) and every old id stays.
`add_tokens` would instead make them added tokens, matched anywhere before the model runs (`▁Heating` →
`▁H eat ing`). The merged model is converted to a fast tokenizer by transformers' own SentencePiece conversion
(what `AutoTokenizer` does for a folder holding only tokenizer.model); sentencepiece itself breaks ties
between equal-score pieces by position, which a rank-ordered fast BPE cannot, so on pairs of competing new
(score 0) pieces the two can split a run differently (see README, "Vocabulary extension").

Offline, before training (the tokenizer folder then goes to `tokenizer.name_or_path` or the model folder):

    python -m models.vocab merge --base <tokenizer folder> --add <chinese_sp.model> --out <folder>
"""
import argparse
import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoTokenizer

from general_util.errors import ConfigError, one_line
from general_util.paths import resolve_path

FREEZE_STRATEGIES = ("none", "embeddings_only")
SP_MODEL_FILE = "tokenizer.model"  # where Hugging Face folders keep a SentencePiece model
NOT_SENTENCEPIECE = ("only a SentencePiece tokenizer (with its tokenizer.model) takes another SentencePiece model's "
                     "pieces with their word boundaries, a byte-level BPE cannot: add whole tokens with "
                     "tokenizer.extra_tokens_file instead")


def read_token_file(path: str) -> list[str]:
    """One token per line (stripped); blank lines are ignored."""
    lines = resolve_path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def sentencepiece_proto(path):
    """The parsed `ModelProto` of a SentencePiece model file."""
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    return proto


def sentencepiece_file(path: str) -> Path:
    """`path` itself (a .model file) or the tokenizer.model in the folder `path`."""
    found = resolve_path(path)
    found = found / SP_MODEL_FILE if found.is_dir() else found
    if not found.is_file() or found.suffix != ".model":
        raise ConfigError(f"tokenizer.merge_tokenizer={path!r}: not a SentencePiece model (a .model file, or a "
                          f"folder with {SP_MODEL_FILE}); {NOT_SENTENCEPIECE}")
    return found


def merge_sentencepiece(base, add) -> list[str]:
    """Chinese-LLaMA-Alpaca's merge: every piece of `add` that `base` lacks is appended to `base` (a ModelProto,
    changed in place) in `add`'s order, score 0; the base's pieces keep their ids. Returns the new pieces."""
    have = {piece.piece for piece in base.pieces}
    new = [piece.piece for piece in add.pieces if piece.piece not in have]
    for text in new:
        piece = base.pieces.add()
        piece.piece, piece.score = text, 0
    return new


def own_sentencepiece(tokenizer) -> Path:
    """The SentencePiece model `tokenizer` was built from; refuses a tokenizer without one, or one whose
    tokens are not exactly its pieces (tokens added after them would lose their ids to the merged pieces)."""
    candidates = (getattr(tokenizer, "vocab_file", None), Path(str(tokenizer.name_or_path)) / SP_MODEL_FILE)
    found = next((Path(c) for c in candidates if c and str(c).endswith(".model") and Path(c).is_file()), None)
    if found is None:
        raise ConfigError(f"tokenizer.merge_tokenizer: the base tokenizer {tokenizer.name_or_path} has no "
                          f"{SP_MODEL_FILE}; {NOT_SENTENCEPIECE}")
    pieces = [piece.piece for piece in sentencepiece_proto(found).pieces]
    if len(tokenizer) != len(pieces) or tokenizer.convert_ids_to_tokens(list(range(len(pieces)))) != pieces:
        raise ConfigError(f"tokenizer.merge_tokenizer: the base tokenizer has {len(tokenizer)} tokens but its {found} "
                          f"{len(pieces)} pieces; merge into the plain SentencePiece tokenizer and add tokens after")
    return found


def merge_tokenizers(tokenizer, merge_tokenizer: str):
    """A new fast tokenizer: `tokenizer`'s SentencePiece model with the pieces of `merge_tokenizer` (a .model
    file or a folder holding tokenizer.model) merged in (`merge_sentencepiece`). The merged model's bytes ride
    along as `sentencepiece_model`, for `save_tokenizer`."""
    proto = sentencepiece_proto(own_sentencepiece(tokenizer))
    merge_sentencepiece(proto, sentencepiece_proto(sentencepiece_file(merge_tokenizer)))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / SP_MODEL_FILE).write_bytes(proto.SerializeToString())
        merged = AutoTokenizer.from_pretrained(folder)
    merged.sentencepiece_model = proto.SerializeToString()
    for setting in ("add_bos_token", "add_eos_token"):  # the base's BOS/EOS (its post-processor), not the default's
        if hasattr(tokenizer, setting):
            setattr(merged, setting, getattr(tokenizer, setting))
    merged.chat_template = tokenizer.chat_template
    merged.model_max_length = tokenizer.model_max_length
    return merged


def save_tokenizer(tokenizer, directory) -> None:
    """`save_pretrained`, with tokenizer_config.json's `added_tokens_decoder` (id -> AddedToken) as the publishers'
    folders carry it (Qwen3-30B-A3B's in tests/fixtures/tokenizers/qwen2; Meta-Llama-3's, Qwen2.5's): transformers
    5 writes none, and a folder without it has every load parse the whole tokenizer.json in Python for the added
    tokens (Llama-3's 17 MB: about half of each load). Plus a merged tokenizer's SentencePiece model as
    tokenizer.model, so that the folder can be merged into again and read by SentencePiece-based tools
    (llama.cpp's converter)."""
    tokenizer.save_pretrained(directory)
    config_file = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {str(index): token.__getstate__()
                                      for index, token in sorted(tokenizer.added_tokens_decoder.items())}
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if getattr(tokenizer, "sentencepiece_model", None):
        (Path(directory) / SP_MODEL_FILE).write_bytes(tokenizer.sentencepiece_model)


def extend_vocabulary(tokenizer, extra_tokens_file: str | None = None, merge_tokenizer: str | None = None):
    """The tokenizer with `merge_tokenizer`'s SentencePiece pieces merged in (a new tokenizer, see
    `merge_tokenizers`), then the tokens of `extra_tokens_file` it lacks added (each once, in order, as added
    tokens: they match anywhere in a text). Old ids never change."""
    if merge_tokenizer:
        tokenizer = merge_tokenizers(tokenizer, merge_tokenizer)
    if extra_tokens_file:
        vocab = tokenizer.get_vocab()
        tokenizer.add_tokens([token for token in dict.fromkeys(read_token_file(extra_tokens_file)) if token not in vocab])
    return tokenizer


def _gathered(*params):
    """Under ZeRO-3 the partitioned parameters, gathered for modification on rank 0; otherwise a no-op."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=0)


def resize_with_mean_rows(model, new_size: int) -> None:
    """Grow embed_tokens and (an untied) lm_head to `new_size` rows, each new row the exact mean of the old
    rows of its matrix (transformers' `mean_resizing` samples around the mean instead)."""
    old_size = model.get_input_embeddings().num_embeddings  # the weight's shape is empty when ZeRO-3 partitioned it
    if new_size <= old_size:
        return
    model.resize_token_embeddings(new_size, mean_resizing=False)
    weights = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    for weight in weights.values():
        with _gathered(weight), torch.no_grad():
            weight[old_size:] = weight[:old_size].mean(dim=0, dtype=torch.float32).to(weight.dtype)


def apply_freeze_strategy(model, strategy: str = "none", train_norms: bool = False) -> None:
    """`embeddings_only`: train embed_tokens and lm_head alone (plus every RMSNorm/LayerNorm weight with
    `train_norms`), the usual first stage after a vocabulary extension. `none` leaves everything as it is."""
    if strategy not in FREEZE_STRATEGIES:
        raise ConfigError(f"model.freeze_strategy={strategy!r}: use one of {', '.join(FREEZE_STRATEGIES)}")
    if strategy == "none":
        return
    trainable = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                 for p in m.parameters()}
    if train_norms:
        trainable |= {id(p) for name, m in model.named_modules() if "norm" in type(m).__name__.lower()
                      for p in m.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)



def main(argv: list[str] | None = None) -> int:
    """`merge`: write the merged tokenizer folder before training (as the original recipes did)."""
    parser = argparse.ArgumentParser(prog="python -m models.vocab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge a SentencePiece model's pieces into a tokenizer folder")
    merge.add_argument("--base", required=True, help="the base tokenizer (or model) folder, with its tokenizer.model")
    merge.add_argument("--add", required=True, help="the SentencePiece model to merge in (.model, or a folder with one)")
    merge.add_argument("--extra-tokens-file", help="then add these whole tokens (one per line) as added tokens")
    merge.add_argument("--out", required=True, help="output folder (a tokenizer folder AutoTokenizer loads)")
    args = parser.parse_args(argv)
    try:
        if not resolve_path(args.base).is_dir():
            raise ConfigError(f"--base {args.base}: no such tokenizer folder")
        base = AutoTokenizer.from_pretrained(resolve_path(args.base))
        merged = extend_vocabulary(base, args.extra_tokens_file, args.add)
        save_tokenizer(merged, args.out)
    except ConfigError as error:
        print(one_line(error), file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(base)} tokens of {args.base} + {len(merged) - len(base)} new = {len(merged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
