"""Examples → token segments (ids + a trained mask), in batches, in this process or in worker processes.

Canonical token sequences: a sample's ids are the tokenizer's encoding of the sample's whole rendered text,
never pieces encoded apart (SentencePiece would give every piece its dummy-prefix `▁`, and BPE merges across a
boundary would be split: a sequence inference never sees). A dialogue is rendered as its pieces back to back,
each response followed by the EOS token's text (the tokenizer reads it as the one special token), encoded
once with character offsets, with BOS in front when the tokenizer adds one. A document is its text, encoded
once (`labels.chunk_document` adds BOS/EOS and cuts it into rows). Chat templates: data/chat.py.

Which tokens are trained (`trained_tokens`), the rule for a token straddling a prompt/response boundary:
**a token is trained when any of its characters belongs to a response (or its EOS)**. So every character
of a response is predicted and a straddling token (e.g. Llama-3's `ĠMy` over `"? " | "My"`, or `▁answer`
when a prompt ends in a space) goes to the response side; the prompt is the tokens made of prompt
characters only. The panda template keeps the original recipes' positional rule instead
(`label_boundary: prompt_length`): a response's loss starts at position N, N = the length of the tokenizer's
own encoding (BOS included) of the text before the response without its final " " separator.
Truncation (`labels.build_dialogue`) then works on the runs of trained/untrained tokens.
"""
import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from data.chat import render_chat, token_pieces, trained_tokens
from data.formats import Example
from data.records import DataError
from data.labels import IGNORE_INDEX, build_dialogue, chunk_document
from general_util.errors import ConfigError


@dataclass
class Segment:
    """One training sequence: a dialogue, or one chunk of a document."""
    input_ids: np.ndarray   # token ids (the cache's token dtype)
    trained: np.ndarray     # bool: label == input id; elsewhere the label is -100


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16) if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


@dataclass
class Tokenized:
    """What one example became: its segments (none when `truncation: drop` dropped it) and how it was cut."""
    segments: list[Segment]
    truncated: bool = False
    prompt_lost: bool = False
    error: DataError | None = None  # the example could not be rendered (its location is the caller's to add)
    label: bool | None = None  # KTO (data/preference.py): the example is desirable (true) or undesirable; stored with the row

    @property
    def dropped(self) -> bool:
        return not self.segments


class ExampleTokenizer:
    """Callable: a batch of examples → for each, a `Tokenized`."""

    def __init__(self, tokenizer, max_seq_length: int, truncation: str = "proportional"):
        self.tokenizer, self.max_seq_length, self.truncation = tokenizer, max_seq_length, truncation
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        if self.eos_id is None:
            raise ConfigError("the tokenizer has no EOS token; every response and document must end with one")
        if not tokenizer.is_fast:
            raise ConfigError(f"{type(tokenizer).__name__} is a slow tokenizer: the labels need the character offsets "
                              "of a fast one (models.loading.load_tokenizer builds it, also from a tokenizer.model)")
        if tokenizer.backend_tokenizer.encode(tokenizer.eos_token, add_special_tokens=False).ids != [self.eos_id]:
            raise ConfigError(f"the tokenizer does not read its EOS text {tokenizer.eos_token!r} as the one EOS token "
                              "(it is not a special token of its vocabulary); responses are closed by that text")
        self.head = bos_head(tokenizer)
        self.dtype = token_dtype(tokenizer)

    def __call__(self, examples: list[Example]) -> list[Tokenized]:
        documents = [example.pieces[0][0] for example in examples if example.document]
        dialogues = [(*render_dialogue(example.pieces, self.tokenizer.eos_token), example.label_boundary)
                     for example in examples if not example.document and not example.messages]
        # verbose=False: documents longer than the model's window are expected here (they are chunked below)
        encode = functools.partial(self.tokenizer, add_special_tokens=False, verbose=False)
        documents = iter(encode(documents)["input_ids"] if documents else ())
        # the fast tokenizer's own backend: the same ids and offsets as tokenizer(...), without converting them
        backend = functools.partial(self.tokenizer.backend_tokenizer.encode_batch, add_special_tokens=False)
        wholes = backend([text for text, _, _ in dialogues]) if dialogues else []
        prompts = [text[:start].removesuffix(" ") for (text, spans, boundary) in dialogues if boundary == "prompt_length"
                   for start, _ in spans]  # the original recipes' prompt: the text before a response, less the " "
        prompt_lengths = iter(len(encoding.ids) for encoding in backend(prompts)) if prompts else iter(())
        results, number = [], 0
        for example in examples:
            if example.messages:
                try:
                    results.append(self._chat(example))
                except DataError as error:
                    results.append(Tokenized([], error=error))
            elif example.document:
                built = chunk_document(next(documents), self.head[0] if self.head else None, self.eos_id,
                                       self.max_seq_length)
                results.append(Tokenized([self._segment(e.input_ids, e.labels) for e in built]))
            else:
                _, spans, boundary = dialogues[number]
                ids, offsets = wholes[number].ids, wholes[number].offsets
                trained = trained_tokens(offsets, spans)
                if boundary == "prompt_length":  # positions counted after the head, as `ids` are
                    trained = positional_mask(trained, offsets, spans, [next(prompt_lengths) for _ in spans])
                number += 1
                results.append(self._dialogue(token_pieces(list(ids), trained), self.head))
        return results

    def _dialogue(self, pieces, head: list[int]) -> Tokenized:
        """The pieces hold every token but the head (BOS); the last piece ends with the closing token (EOS, or
        the chat template's end of turn), which truncation keeps."""
        dialogue = build_dialogue(pieces, head[0] if head else None, None, self.max_seq_length, self.truncation)
        if dialogue is None:
            return Tokenized([], truncated=True)
        return Tokenized([self._segment(dialogue.input_ids, dialogue.labels)], dialogue.truncated, dialogue.prompt_lost)

    def _chat(self, example: Example) -> Tokenized:
        """The tokenizer's chat template writes BOS and every end-of-turn itself: nothing is added."""
        ids, trained = render_chat(self.tokenizer, example.messages, example.tools)
        head = []
        if ids and ids[0] == self.bos_id:
            head, ids, trained = ids[:1], ids[1:], trained[1:]
        return self._dialogue(token_pieces(ids, trained), head)

    def tagged(self, batch: list[tuple[object, Example]]) -> list[tuple[object, Tokenized]]:
        """The same for (tag, example) pairs. Tags (provenance) pass through."""
        results = self([example for _, example in batch])
        return [(tag, result) for (tag, _), result in zip(batch, results)]

    def _segment(self, input_ids: list[int], labels: list[int]) -> Segment:
        return Segment(np.asarray(input_ids, dtype=self.dtype), np.asarray(labels) != IGNORE_INDEX)


def bos_head(tokenizer) -> list[int]:
    """The BOS the tokenizer puts in front of a text ([] for one that adds none, e.g. Qwen2's)."""
    bos_id = tokenizer.bos_token_id
    return [bos_id] if bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id] else []


def render_dialogue(pieces, eos_text: str) -> tuple[str, list[tuple[int, int]]]:
    """(whole text, character span of every response with its EOS text) of a dialogue's (text, trained) pieces."""
    text, spans = "", []
    for piece, trained in pieces:
        if trained:
            spans.append((len(text), len(text) + len(piece) + len(eos_text)))
            piece += eos_text
        text += piece
    return text, spans


def positional_mask(trained: list[bool], offsets, spans, starts: list[int]) -> list[bool]:
    """The panda rule: response k's trained run starts at position `starts[k]` (at the latest at its last token,
    so its EOS is always trained) and ends with the last token holding its characters."""
    trained = list(trained)
    for (begin, end), start in zip(spans, starts):
        inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > begin]
        first, last = inside[0], inside[-1]
        start = min(start, last)
        trained[start:last + 1] = [True] * (last + 1 - start)
        trained[first:start] = [False] * max(0, start - first)
    return trained


_worker_tokenizer: ExampleTokenizer | None = None


def _init_worker(example_tokenizer: ExampleTokenizer) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the worker processes are the parallelism
    _worker_tokenizer = example_tokenizer


def _tokenize_in_worker(batch: list[tuple[object, Example]]):
    return _worker_tokenizer.tagged(batch)


def tokenize_batches(batches: Iterable[list[tuple[object, Example]]], example_tokenizer: ExampleTokenizer,
                     num_proc: int) -> Iterator[list[tuple[object, Tokenized]]]:
    """Batches of (tag, example) → batches of (tag, Tokenized), in input order. `num_proc` ≤ 1:
    in this process (a fast tokenizer then spreads each batch over its own threads). `num_proc` > 1: in
    worker processes, one thread each; at most 2 × num_proc batches are in flight, so memory does not
    grow with the corpus."""
    if num_proc <= 1:
        yield from map(example_tokenizer.tagged, batches)
        return
    import multiprocessing
    # forkserver, not fork: the caller holds threads (gloo's, DeepSpeed's; the trainer builds the cache after
    # joining the process group), and a child forked while one of them holds a lock waits on it forever
    with multiprocessing.get_context("forkserver").Pool(num_proc, _init_worker, (example_tokenizer,)) as pool:
        yield from _bounded_imap(pool.apply_async, _tokenize_in_worker, batches, window=2 * num_proc)


def _bounded_imap(submit: Callable, function: Callable, items: Iterable, window: int) -> Iterator:
    """Like Pool.imap, which reads its whole input ahead, but with at most `window` items in flight."""
    pending = deque()
    for item in items:
        pending.append(submit(function, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
