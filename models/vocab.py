"""Vocabulary extension (new tokens from a file or from a second tokenizer, new embedding rows at the
mean of the old ones) and the embeddings-only training stage that usually follows it."""
from contextlib import nullcontext

import torch
from transformers import AutoTokenizer

from general_util.paths import resolve_path
from general_util.errors import ConfigError

FREEZE_STRATEGIES = ("none", "embeddings_only")


def read_token_file(path: str) -> list[str]:
    """One token per line (stripped); blank lines are ignored."""
    lines = resolve_path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def tokenizer_pieces(path: str) -> list[str]:
    """The surface strings of another tokenizer's (tokenizers or sentencepiece) regular vocabulary, in id
    order: pieces are decoded so that byte-level (Ġ) and sentencepiece (▁) markers become plain text."""
    other = AutoTokenizer.from_pretrained(resolve_path(path))
    special = set(other.all_special_tokens)
    pieces = sorted(other.get_vocab().items(), key=lambda item: item[1])
    texts = (other.convert_tokens_to_string([piece]).strip() for piece, _ in pieces if piece not in special)
    return [text for text in texts if text]


def extend_vocabulary(tokenizer, extra_tokens_file: str | None = None, merge_tokenizer: str | None = None) -> list[str]:
    """Add the tokens of `extra_tokens_file` and of the `merge_tokenizer` vocabulary that `tokenizer` does not
    have yet (each once, in order); returns the added tokens. Text that does not contain a new token keeps
    its ids."""
    candidates = (read_token_file(extra_tokens_file) if extra_tokens_file else []) + \
                 (tokenizer_pieces(merge_tokenizer) if merge_tokenizer else [])
    vocab = tokenizer.get_vocab()
    new = [token for token in dict.fromkeys(candidates) if token not in vocab]
    tokenizer.add_tokens(new)
    return new


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

