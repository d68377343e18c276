"""Examples → token segments (ids + a trained mask), in batches, in this process or in worker processes.

Each text piece is tokenized on its own (no special tokens), then `labels.build_dialogue` or
`labels.chunk_document` assembles ids and labels from the pieces.
"""
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from data.chat import render_chat, token_pieces
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
        self.dtype = token_dtype(tokenizer)

    def __call__(self, examples: list[Example]) -> list[Tokenized]:
        texts = [text for example in examples for text, _ in example.pieces]
        # verbose=False: documents longer than the model's window are expected here (they are chunked below)
        encoded = iter(self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]) if texts else iter(())
        results = []
        for example in examples:
            if example.messages:
                try:
                    results.append(self._chat(example))
                except DataError as error:
                    results.append(Tokenized([], error=error))
                continue
            pieces = [(next(encoded), trained) for _, trained in example.pieces]
            if example.document:
                built = chunk_document(pieces[0][0], self.bos_id, self.eos_id, self.max_seq_length)
                results.append(Tokenized([self._segment(e.input_ids, e.labels) for e in built]))
                continue
            results.append(self._dialogue(pieces, self.bos_id, self.eos_id))
        return results

    def _dialogue(self, pieces, bos_id, eos_id) -> Tokenized:
        dialogue = build_dialogue(pieces, bos_id, eos_id, self.max_seq_length, self.truncation)
        if dialogue is None:
            return Tokenized([], truncated=True)
        return Tokenized([self._segment(dialogue.input_ids, dialogue.labels)], dialogue.truncated, dialogue.prompt_lost)

    def _chat(self, example: Example) -> Tokenized:
        """The tokenizer's chat template writes BOS and every end-of-turn itself: nothing is added."""
        ids, trained = render_chat(self.tokenizer, example.messages, example.tools)
        bos_id = None
        if ids and ids[0] == self.bos_id:
            bos_id, ids, trained = ids[0], ids[1:], trained[1:]
        return self._dialogue(token_pieces(ids, trained), bos_id, None)

    def tagged(self, batch: list[tuple[object, Example]]) -> list[tuple[object, Tokenized]]:
        """The same for (tag, example) pairs. Tags (provenance) pass through."""
        results = self([example for _, example in batch])
        return [(tag, result) for (tag, _), result in zip(batch, results)]

    def _segment(self, input_ids: list[int], labels: list[int]) -> Segment:
        return Segment(np.asarray(input_ids, dtype=self.dtype), np.asarray(labels) != IGNORE_INDEX)


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
