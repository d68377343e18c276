"""Log-likelihood of continuations under a causal LM, batched, with lm-evaluation-harness' definitions.

Tokenization (lm-eval `HFLM._encode_pair`): whitespace at the end of the context is moved to the front of
the continuation; context + continuation is encoded whole, and the context alone; the continuation's
tokens are the whole encoding beyond the context's length (so a token merged across the boundary counts
as the continuation's, as the whole text tokenizes). With `add_bos` the BOS token is put before the
context (LLaMA saw it in training; lm-eval's `add_bos_token=True`). The options of one item share their
context: it is encoded once (`encode_options`).

Scoring (lm-eval `_loglikelihood_tokens`): the log-probs of the continuation's tokens, each read at the
position that predicts it, are summed — the model reading (context + continuation)[:-1], cut from the left
to `max_length` tokens. Two row layouts compute exactly that:

- shared context (attention `sdpa` or `eager`): the requests with the same context share one row, the
  context once, then each continuation but its last token as a branch; a 4D mask lets each branch see the
  context and itself only, and its position ids continue from the context's end. An item's four options
  then cost one context instead of four. A row holds at most `max_length` tokens (more branches open a
  new row). A request cut from the left to `max_length` (lm-eval's truncation, `truncation="lm_eval"`) gets
  a row of its own: its cut depends on its continuation's length. `truncation="shared"` instead cuts the
  context once, so that the longest continuation of the context still fits, and keeps every request of
  that context in one row (faster on long prompts; shorter options then see a little less context than
  lm-eval gives them, so their scores may differ).
- flat (other attention implementations, which take no custom mask): a row per request, except that a
  request whose input is a prefix of another's takes its log-probs from that row (a causal model's logits
  at a position depend only on the tokens before it), so single-token letters " A".." D" share a row.

Rows are right-padded; without branches no mask is passed (as lm-eval): real positions never see the
padding after them, and SDPA keeps its causal kernel. Logits are computed only at the scored positions
(`logits_to_keep`, a boolean [rows, width] mask): the vocabulary projection and the float64 log-softmax
skip the context.

Choice: `acc` takes the option with the largest sum; `acc_norm` the largest sum per character of the
answer (lm-eval's `acc_norm`). `score_batch` also tells whether each continuation is the greedy one (every
token the argmax at its position, lm-eval's `is_greedy`).
"""
from dataclasses import dataclass

import torch

from data.packing import attention_window
from modules.loss_impl import LossSettings, target_log_probs


@dataclass(frozen=True)
class Request:
    context: list[int]        # token ids, BOS included
    continuation: list[int]   # the scored token ids


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool = True) -> Request:
    return encode_options(tokenizer, context, [continuation], add_bos)[0]


TAIL_TOKENS = 64  # a long context's continuations are tokenized after its last TAIL_TOKENS tokens only


def clean_cut(offsets: list[tuple[int, int]], index: int) -> int:
    """The first token at or after `index` that starts a new character (a byte-level tokenizer writes one
    multi-byte character as several tokens that share its offsets)."""
    while 0 < index < len(offsets) and offsets[index][0] < offsets[index - 1][1]:
        index += 1
    return index


def continuation_ids(tokenizer, context: str, context_ids: list[int], offsets: list[tuple[int, int]] | None,
                     continuations: list[str]) -> list[list[int]]:
    """lm-eval's continuation tokens: the encoding of context + continuation beyond the context's tokens.
    A long context is not encoded again per option: its tail (from the start of its TAIL_TOKENS-th last token)
    + each continuation is, and its tokens stand for the whole encoding's when the tail's first tokens come
    out as the context's own (the tokenization did not reach back across that point); otherwise, and for
    slow tokenizers (no `offsets`), the whole texts are encoded."""
    if len(context_ids) > 2 * TAIL_TOKENS and offsets is not None:
        cut = clean_cut(offsets, len(context_ids) - TAIL_TOKENS)
        tail_ids = context_ids[cut:]
        wholes = tokenizer([context[offsets[cut][0]:] + c for c in continuations], add_special_tokens=False)["input_ids"]
        stable = len(tail_ids) // 2  # the tail's first half must be the context's, token for token
        if all(whole[:stable] == tail_ids[:stable] for whole in wholes):
            return [whole[len(tail_ids):] for whole in wholes]
    wholes = tokenizer([context + c for c in continuations], add_special_tokens=False)["input_ids"]
    return [whole[len(context_ids):] for whole in wholes]


def context_tail(tokenizer, context: str, keep_tokens: int):
    """The encoding of the end of a long `context` that holds at least its last `keep_tokens` tokens, without
    encoding the whole context: (text, ids, offsets) of a suffix window whose first TAIL_TOKENS tokens (where
    the cut may split a word) are dropped, checked against a window starting further back. None when the
    context is not that long or the two windows disagree."""
    width = keep_tokens + 2 * TAIL_TOKENS
    while width < len(context):
        windows = [tokenizer(context[-w:], add_special_tokens=False, return_offsets_mapping=True)
                   for w in (width, min(len(context), width + 4 * TAIL_TOKENS))]
        ids, longer, offsets = windows[0]["input_ids"], windows[1]["input_ids"], windows[0]["offset_mapping"]
        if len(ids) >= keep_tokens + TAIL_TOKENS:
            cut = clean_cut(offsets, TAIL_TOKENS)
            kept, start = ids[cut:], offsets[cut][0]
            text = context[-width:][start:]
            if longer[-len(kept):] != kept or tokenizer(text, add_special_tokens=False)["input_ids"] != kept:
                return None
            return text, kept, [(a - start, b - start) for a, b in offsets[cut:]]
        width *= 2
    return None


def encode_options(tokenizer, context: str, continuations: list[str], add_bos: bool = True,
                   keep_tokens: int | None = None) -> list[Request]:
    """One request per continuation after the same context (the context is encoded once). `keep_tokens`: only
    the context's last that many tokens will be read (scoring cuts from the left to max_length + 1), so a
    longer context is encoded from a window at its end (`context_tail`); the request's context is then that
    tail, without BOS (the cut removes it anyway)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuations = context[:-spaces], [context[-spaces:] + c for c in continuations]
    fast = getattr(tokenizer, "is_fast", False)
    tail = context_tail(tokenizer, context, keep_tokens) if keep_tokens and fast else None
    if tail is not None:
        text, context_ids, offsets = tail
        return [Request(context_ids, ids) for ids in continuation_ids(tokenizer, text, context_ids, offsets,
                                                                       continuations)]
    encoded = tokenizer(context, add_special_tokens=False, return_offsets_mapping=fast)
    context_ids, offsets = encoded["input_ids"], encoded.get("offset_mapping")
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    requests = [Request(bos + context_ids, ids)
                for ids in continuation_ids(tokenizer, context, context_ids, offsets, continuations)]
    for request, continuation in zip(requests, continuations):
        if not request.context or not request.continuation:
            raise ValueError(f"cannot score continuation {continuation!r} after context {context[-40:]!r}: "
                             f"{'the context' if not request.context else 'the continuation'} has no tokens"
                             f"{' (set add_bos=true)' if not request.context else ''}")
    return requests


SHARED_CONTEXT_ATTENTION = ("sdpa", "eager")  # attention implementations that apply a custom 4D mask


@dataclass
class PackedBatch:
    input_ids: torch.Tensor         # [rows, width], right-padded
    position_ids: torch.Tensor      # [rows, width]: a branch continues from its context's end
    segments: torch.Tensor          # [rows, width]: 0 context, k ≥ 1 the row's k-th branch, -1 padding
    logits_to_keep: torch.Tensor    # [rows, width] bool: the positions whose logits are scored
    targets: list[tuple[int, list[int], list[int]]]  # per request: row, positions predicting its tokens, tokens
    truncated: list[bool]           # per request: context cut from the left to fit max_length

    def attention_mask(self, dtype: torch.dtype, sliding_window: int | None = None) -> torch.Tensor | None:
        """Additive [rows, 1, width, width] mask (None without branches: plain causal attention). A token sees
        the earlier tokens of the context and of its own branch (with a `sliding_window`, Mistral's, only those
        less than that many positions back, as the model's own mask has it); padding sees itself (no NaN rows)."""
        if not bool((self.segments > 0).any()):
            return None
        query, key = self.segments[:, :, None], self.segments[:, None, :]
        width = self.segments.shape[1]
        seen = torch.ones(width, width, dtype=torch.bool).tril() & (key >= 0) & ((key == 0) | (key == query))
        if sliding_window:
            seen &= (self.position_ids[:, :, None] - self.position_ids[:, None, :]) < sliding_window
        seen |= torch.eye(width, dtype=torch.bool)
        return torch.zeros(seen.shape, dtype=dtype).masked_fill_(~seen, torch.finfo(dtype).min)[:, None]


TRUNCATIONS = ("lm_eval", "shared")


def shared_cut(requests: list[Request], max_length: int) -> list[Request]:
    """Every context cut from the left once, to what its longest continuation leaves of `max_length`."""
    longest: dict[tuple[int, ...], int] = {}
    for r in requests:
        longest[tuple(r.context)] = max(longest.get(tuple(r.context), 0), len(r.continuation))
    return [Request(r.context[-(max_length + 1 - longest[tuple(r.context)]):], r.continuation)
            if len(r.context) + longest[tuple(r.context)] > max_length + 1 else r for r in requests]


def pack(requests: list[Request], max_length: int, shared_context: bool = True,
         truncation: str = "lm_eval") -> PackedBatch:
    for request in requests:
        if len(request.continuation) > max_length:
            raise ValueError(f"a continuation of {len(request.continuation)} tokens exceeds max_seq_length={max_length}")
    truncated = [len(r.context) + len(r.continuation) > max_length + 1 for r in requests]
    if shared_context and truncation == "shared":
        cut = shared_cut(requests, max_length)
        truncated = [len(c.context) < len(r.context) for c, r in zip(cut, requests)]
        requests, flat_when_truncated = cut, False
    else:
        flat_when_truncated = True
    rows: list[tuple[list[int], list[list[int]]]] = []  # (context or whole input, branches)
    placed: list[tuple[int, list[int]]] = [(0, [])] * len(requests)  # per request: row, predicting positions
    open_row: dict[tuple[int, ...], int] = {}  # shared context: the row still taking branches of a context
    flat = [i for i in range(len(requests)) if not shared_context or (truncated[i] and flat_when_truncated)]
    for i in sorted(flat, key=lambda i: -len(requests[i].context) - len(requests[i].continuation)):
        r = requests[i]
        row = (r.context + r.continuation)[-(max_length + 1):][:-1]
        at = next((k for k, (other, branches) in enumerate(rows) if not branches and other[:len(row)] == row), len(rows))
        if at == len(rows):
            rows.append((row, []))
        placed[i] = (at, list(range(len(row) - len(r.continuation), len(row))))
    for i in sorted(set(range(len(requests))) - set(flat)):
        r, branch = requests[i], requests[i].continuation[:-1]
        at = open_row.get(tuple(r.context))
        # a row of a context cut for its longest branch keeps all the context's branches (each sees ≤ max_length)
        limit = max_length if flat_when_truncated or not truncated[i] else float("inf")
        if at is None or len(rows[at][0]) + sum(map(len, rows[at][1])) + len(branch) > limit:
            at = open_row[tuple(r.context)] = len(rows)
            rows.append((r.context, []))
        context, branches = rows[at]
        start = len(context) + sum(map(len, branches))
        branches.append(branch)
        placed[i] = (at, [len(context) - 1] + list(range(start, start + len(branch))))
    width = max(len(context) + sum(map(len, branches)) for context, branches in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)  # padding: any id, never attended to
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for k, (context, branches) in enumerate(rows):
        ids, positions, segment = list(context), list(range(len(context))), [0] * len(context)
        for b, branch in enumerate(branches, 1):
            ids += branch
            positions += range(len(context), len(context) + len(branch))
            segment += [b] * len(branch)
        input_ids[k, :len(ids)], position_ids[k, :len(ids)] = torch.tensor(ids), torch.tensor(positions)
        segments[k, :len(ids)] = torch.tensor(segment)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    targets = [(row, positions, r.continuation) for (row, positions), r in zip(placed, requests)]
    for row, positions, _ in targets:
        keep[row, positions] = True
    return PackedBatch(input_ids, position_ids, segments, keep, targets, truncated)


@dataclass
class Scores:
    sums: list[float]        # per request: summed log-prob of its continuation
    greedy: list[bool]       # per request: every continuation token is the argmax at its position
    truncated: list[bool]    # per request: context cut from the left to fit max_length


def scored_tokens(batch: PackedBatch) -> tuple[list[int], list[int], list[int]]:
    """Per scored token: the index of the position that predicts it among `batch.logits_to_keep`'s True
    positions (row-major order), the token, and the request it belongs to."""
    width = batch.logits_to_keep.shape[1]
    flat = (batch.logits_to_keep.flatten().cumsum(0) - 1).tolist()  # (row, position) → index in the kept logits
    index, tokens, owner = [], [], []
    for i, (row, positions, continuation) in enumerate(batch.targets):
        index += [flat[row * width + p] for p in positions]
        tokens += continuation
        owner += [i] * len(continuation)
    return index, tokens, owner


@torch.no_grad()
def score_batch(model, requests: list[Request], max_length: int, device: torch.device, loss: LossSettings,
                truncation: str = "lm_eval") -> Scores:
    """One forward call over all `requests`: their summed continuation log-probs (float64 log-softmax), greedy
    and truncation flags. `model`: a transformers causal LM, or a wrapper of one (DeepSpeed engine: `.module`;
    peft). Under `loss.impl` chunked/liger the log-probs come from the hidden states a slice of positions
    at a time (modules/loss_impl.py), so no kept positions × vocabulary tensor is built."""
    config = getattr(getattr(model, "module", model), "config", None)
    shared = getattr(config, "_attn_implementation", None) in SHARED_CONTEXT_ATTENTION
    try:
        window = attention_window(config)
    except ValueError:  # windowed and full layers: no one mask serves both, so no shared contexts
        window, shared = None, False
    batch = pack(requests, max_length, shared, truncation)
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "logits_to_keep": batch.logits_to_keep}
    mask = batch.attention_mask(next(model.parameters()).dtype, window)
    if mask is not None:
        inputs["attention_mask"] = mask
    index, tokens, owner = (torch.tensor(values, device=device) for values in scored_tokens(batch))
    picked, is_argmax = target_log_probs(model, {k: v.to(device) for k, v in inputs.items()}, index, tokens, loss)
    sums = torch.zeros(len(batch.targets), dtype=picked.dtype, device=device).index_add_(0, owner, picked)
    misses = torch.zeros(len(batch.targets), dtype=torch.long, device=device).index_add_(0, owner, (~is_argmax).long())
    return Scores(sums.tolist(), (misses == 0).tolist(), batch.truncated)  # one copy each to host


def score_requests(model, requests: list[Request], max_length: int, device: torch.device, loss: LossSettings,
                   truncation: str = "lm_eval") -> tuple[list[float], list[bool]]:
    """`score_batch`'s summed continuation log-probs and truncation flags."""
    scores = score_batch(model, requests, max_length, device, loss, truncation)
    return scores.sums, scores.truncated


def choose(sums: list[float], answer_chars: list[int]) -> tuple[int, int]:
    """(acc choice, acc_norm choice): argmax of the sums, and of the sums per answer character (first on ties)."""
    per_char = [s / n for s, n in zip(sums, answer_chars)]
    return max(range(len(sums)), key=sums.__getitem__), max(range(len(per_char)), key=per_char.__getitem__)
