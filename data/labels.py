"""Token ids + labels from separately tokenized pieces, so no tokenizer boundary merge can shift the
loss mask and the mask never depends on which token pads.

Every example starts with a label of -100: nothing in the example predicts its first token, and when
examples are packed into one row the previous example's last token must not predict it either.
"""
from dataclasses import dataclass

from general_util.errors import ConfigError

IGNORE_INDEX = -100


TRUNCATION = ("proportional", "context_first", "drop")


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False    # some tokens were cut to fit max_seq_length
    prompt_lost: bool = False  # ... and no prompt token is left: the response is trained unconditioned


def kept_lengths(context: int, response: int, budget: int, truncation: str) -> tuple[int, int]:
    """(context tokens, response tokens) kept of a dialogue that needs `context + response` > `budget`.
    `context_first`: the context goes first, then the response's end. `proportional`: a side that fits in
    half the budget is kept whole and the other cut; otherwise both are cut in proportion to their lengths
    (at least one token each), so no sample loses its whole prompt."""
    if truncation == "context_first":
        kept_response = min(response, budget)
        return budget - kept_response, kept_response
    if context <= budget / 2:
        return context, budget - context
    if response <= budget / 2:
        return budget - response, response
    kept_context = min(max(1, round(budget * context / (context + response))), budget - 1)
    return kept_context, budget - kept_context


def build_dialogue(pieces: list[tuple[list[int], bool]], bos_id: int | None, eos_id: int | None,
                   max_seq_length: int, truncation: str = "proportional") -> TokenizedExample | None:
    """BOS + pieces, each trained piece (a response) followed by EOS, which is trained too. With
    `eos_id=None` the pieces are complete as they are (a chat template wrote each turn's end): nothing is
    appended and the last response's final token is the one that always survives.

    Too long for `max_seq_length`: `truncation` decides (see `kept_lengths`; `drop` returns None). The
    context (everything before the last response) loses its oldest tokens, the last response its final
    tokens; BOS and the closing token always survive. An earlier response whose beginning is cut away
    answers nothing that is left, so what remains of it is not trained."""
    if not pieces or not pieces[-1][1] or not pieces[-1][0]:
        raise ValueError("a dialogue must end with a non-empty trained piece (the response)")
    if truncation not in TRUNCATION:
        raise ConfigError(f"truncation={truncation!r}: use one of {', '.join(TRUNCATION)}")
    head = [bos_id] if bos_id is not None else []
    response, closing = (pieces[-1][0], [eos_id]) if eos_id is not None else (pieces[-1][0][:-1], pieces[-1][0][-1:])
    budget = max_seq_length - len(head) - 1  # room for context + last response body
    if budget < 1:
        raise ConfigError(f"max_seq_length={max_seq_length} leaves no room for a response")
    context_ids, context_labels, spans = [], [], []
    for ids, trained in pieces[:-1]:
        tokens = ids + [eos_id] if trained and eos_id is not None else ids
        spans.append((len(context_ids), len(context_ids) + len(tokens), trained))
        context_ids += tokens
        context_labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
    truncated = len(context_ids) + len(response) > budget
    if truncated and truncation == "drop":
        return None
    kept_context, kept_response = kept_lengths(len(context_ids), len(response), budget, truncation) if truncated \
        else (len(context_ids), len(response))
    response = response[:kept_response]
    cut = len(context_ids) - kept_context
    for start, end, trained in spans:
        if trained and start < cut < end:
            context_labels[cut:end] = [IGNORE_INDEX] * (end - cut)
    prompt_tokens = sum(max(0, end - max(start, cut)) for start, end, trained in spans if not trained)
    input_ids = head + context_ids[cut:] + response + closing
    labels = [IGNORE_INDEX] * len(head) + context_labels[cut:] + response + closing
    labels[0] = IGNORE_INDEX
    had_prompt = any(end > start for start, end, trained in spans if not trained)
    return TokenizedExample(input_ids, labels, truncated, truncated and had_prompt and prompt_tokens == 0)


def build_example(prompt_ids: list[int], response_ids: list[int], bos_id: int | None, eos_id: int,
                  max_seq_length: int, truncation: str = "context_first") -> TokenizedExample:
    """BOS + prompt + response + EOS, truncated to `max_seq_length` by `truncation` (the EOS always survives)."""
    return build_dialogue([(prompt_ids, False), (response_ids, True)], bos_id, eos_id, max_seq_length, truncation)


def chunk_document(ids: list[int], bos_id: int | None, eos_id: int, max_seq_length: int) -> list[TokenizedExample]:
    """BOS + text + EOS, every token trained, split into chunks of at most `max_seq_length`. Consecutive
    chunks overlap by one token (the first of a chunk, label -100, is the last of the one before), so every
    token but BOS is predicted exactly once and none is dropped."""
    if max_seq_length < 2:
        raise ConfigError(f"max_seq_length={max_seq_length}: a chunk needs at least 2 tokens")
    sequence = ([bos_id] if bos_id is not None else []) + ids + [eos_id]
    chunks, start = [], 0
    while True:
        piece = sequence[start:start + max_seq_length]
        chunks.append(TokenizedExample(piece, [IGNORE_INDEX] + piece[1:]))
        if start + max_seq_length >= len(sequence):
            return chunks
        start += max_seq_length - 1
