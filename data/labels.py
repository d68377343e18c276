"""Token ids + labels from separately tokenized pieces, so no tokenizer boundary merge can shift the
loss mask and the mask never depends on which token pads.

Every example starts with a label of -100: nothing in the example predicts its first token, and when
examples are packed into one row the previous example's last token must not predict it either.
"""
from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def build_dialogue(pieces: list[tuple[list[int], bool]], bos_id: int | None, eos_id: int,
                   max_seq_length: int) -> tuple[TokenizedExample, bool]:
    """BOS + pieces, each trained piece (a response) followed by EOS, which is trained too.

    Truncation to `max_seq_length` (returned flag: whether it happened): the context (everything before
    the last response) loses its oldest tokens first, then the last response its final tokens; BOS and
    the last EOS always survive. An earlier response whose beginning is cut away answers nothing that is
    left, so what remains of it is not trained."""
    if not pieces or not pieces[-1][1]:
        raise ValueError("a dialogue must end with a trained piece (the response)")
    head = [bos_id] if bos_id is not None else []
    budget = max_seq_length - len(head) - 1  # room for context + last response body
    if budget < 1:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for a response")
    context_ids, context_labels, spans = [], [], []
    for ids, trained in pieces[:-1]:
        tokens = ids + [eos_id] if trained else ids
        spans.append((len(context_ids), len(context_ids) + len(tokens), trained))
        context_ids += tokens
        context_labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
    response = pieces[-1][0]
    truncated = len(context_ids) + len(response) > budget
    response = response[:budget]
    cut = len(context_ids) - min(len(context_ids), budget - len(response))
    for start, end, trained in spans:
        if trained and start < cut < end:
            context_labels[cut:end] = [IGNORE_INDEX] * (end - cut)
    input_ids = head + context_ids[cut:] + response + [eos_id]
    labels = [IGNORE_INDEX] * len(head) + context_labels[cut:] + response + [eos_id]
    labels[0] = IGNORE_INDEX
    return TokenizedExample(input_ids, labels), truncated


def build_example(prompt_ids: list[int], response_ids: list[int], bos_id: int | None, eos_id: int,
                  max_seq_length: int) -> TokenizedExample:
    """BOS + prompt + response + EOS, truncated to `max_seq_length`: the prompt loses its oldest tokens
    first, then the response body its last ones; the EOS always survives."""
    return build_dialogue([(prompt_ids, False), (response_ids, True)], bos_id, eos_id, max_seq_length)[0]


def chunk_document(ids: list[int], bos_id: int | None, eos_id: int, max_seq_length: int) -> list[TokenizedExample]:
    """BOS + text + EOS, every token trained, split into chunks of at most `max_seq_length`. Consecutive
    chunks overlap by one token (the first of a chunk, label -100, is the last of the one before), so every
    token but BOS is predicted exactly once and none is dropped."""
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length={max_seq_length}: a chunk needs at least 2 tokens")
    sequence = ([bos_id] if bos_id is not None else []) + ids + [eos_id]
    chunks, start = [], 0
    while True:
        piece = sequence[start:start + max_seq_length]
        chunks.append(TokenizedExample(piece, [IGNORE_INDEX] + piece[1:]))
        if start + max_seq_length >= len(sequence):
            return chunks
        start += max_seq_length - 1
