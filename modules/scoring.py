"""Log-likelihood of continuations under a causal LM, batched, with lm-evaluation-harness' definitions.

Tokenization (lm-eval `HFLM._encode_pair`): whitespace at the end of the context is moved to the front of
the continuation; context + continuation is encoded whole, and the context alone; the continuation's
tokens are the whole encoding beyond the context's length (so a token merged across the boundary counts
as the continuation's, as the whole text tokenizes). With `add_bos` the BOS token is put before the
context (LLaMA saw it in training; lm-eval's `add_bos_token=True`).

Scoring (lm-eval `_loglikelihood_tokens`): the model reads (context + continuation)[:-1], cut from the
left to `max_length` tokens, and the log-probs of the continuation's tokens, at the positions that
predict them, are summed. Rows are right-padded and masked. A request whose input is a prefix of another
request's input in the same batch takes its log-probs from that row (a causal model's logits at a
position depend only on the tokens before it), so the options of an item share a row where they can —
single-token letters " A".." D" (MMLU style) then cost one row per item.

Choice: `acc` takes the option with the largest sum; `acc_norm` the largest sum per character of the
answer (lm-eval's `acc_norm`).
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Request:
    context: list[int]        # token ids, BOS included
    continuation: list[int]   # the scored token ids


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool = True) -> Request:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    request = Request(bos + context_ids, whole[len(context_ids):])
    if not request.context or not request.continuation:
        raise ValueError(f"cannot score continuation {continuation!r} after context {context[-40:]!r}: "
                         f"{'the context' if not request.context else 'the continuation'} has no tokens"
                         f"{' (set add_bos=true)' if not request.context else ''}")
    return request


@dataclass
class PackedBatch:
    input_ids: torch.Tensor         # [rows, width], right-padded
    attention_mask: torch.Tensor
    targets: list[tuple[int, int, list[int]]]  # per request: row, position predicting its first token, its tokens
    truncated: list[bool]           # per request: context cut from the left to fit max_length


def pack(requests: list[Request], max_length: int) -> PackedBatch:
    for request in requests:
        if len(request.continuation) > max_length:
            raise ValueError(f"a continuation of {len(request.continuation)} tokens exceeds max_seq_length={max_length}")
    inputs = [(r.context + r.continuation)[-(max_length + 1):][:-1] for r in requests]
    rows: list[list[int]] = []
    row_of = [0] * len(requests)
    for i in sorted(range(len(requests)), key=lambda i: -len(inputs[i])):
        row_of[i] = next((r for r, row in enumerate(rows) if row[:len(inputs[i])] == inputs[i]), len(rows))
        if row_of[i] == len(rows):
            rows.append(inputs[i])
    width = max(len(row) for row in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)  # padding: any id, masked out
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, :len(row)] = torch.tensor(row)
        attention_mask[r, :len(row)] = 1
    targets = [(row_of[i], len(inputs[i]) - len(r.continuation), r.continuation) for i, r in enumerate(requests)]
    truncated = [len(r.context) + len(r.continuation) > max_length + 1 for r in requests]
    return PackedBatch(input_ids, attention_mask, targets, truncated)


def continuation_logprobs(logits: torch.Tensor, batch: PackedBatch) -> list[float]:
    """Summed log-prob of each request's continuation (log-softmax in float64, only at the positions needed)."""
    sums = []
    for row, start, tokens in batch.targets:
        log_probs = logits[row, start:start + len(tokens)].double().log_softmax(dim=-1)
        sums.append(log_probs.gather(-1, torch.tensor(tokens, device=logits.device).unsqueeze(-1)).sum())
    return torch.stack(sums).tolist()  # one device-to-host copy per batch


@torch.no_grad()
def score_requests(model, requests: list[Request], max_length: int, device: torch.device) -> tuple[list[float], list[bool]]:
    """One forward call over all `requests`: their summed continuation log-probs and truncation flags."""
    batch = pack(requests, max_length)
    logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
    return continuation_logprobs(logits, batch), batch.truncated


def choose(sums: list[float], answer_chars: list[int]) -> tuple[int, int]:
    """(acc choice, acc_norm choice): argmax of the sums, and of the sums per answer character (first on ties)."""
    per_char = [s / n for s, n in zip(sums, answer_chars)]
    return max(range(len(sums)), key=sums.__getitem__), max(range(len(per_char)), key=per_char.__getitem__)
