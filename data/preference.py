"""Preference records → pairs of examples (chosen, rejected) that share their prompt, and their tokens; KTO's
unpaired records → one example with its label (desirable or not).

Each layout is recognised per record (the first whose fields are all present wins); each side is rewritten into
an SFT layout of data/formats.py and converted by it, so both sides render with every template (the text
templates and the tokenizer's chat template) exactly as SFT data does:

    LLaMA-Factory ranking, sharegpt   {"conversations": [{"from", "value"}, ...], "chosen": {"from": "gpt", "value"},
                                       "rejected": {...}, "system"?, "tools"?}   (data/dpo_{en,zh}_demo.json)
    LLaMA-Factory ranking, alpaca     {"instruction", "input"?, "chosen": str, "rejected": str}
    TRL, explicit prompt              {"prompt": str | [messages], "chosen": str | [messages], "rejected": ...}
    TRL, implicit prompt              {"chosen": [messages], "rejected": [messages]}: the shared leading messages are
                                       the prompt (UltraFeedback binarized; its "prompt" string, when present, is
                                       the first user message again and is then not repeated)
    HH-RLHF                           {"chosen": str, "rejected": str}: whole transcripts "\\n\\nHuman: … \\n\\nAssistant: …"
                                       sharing everything but the last assistant turn

KTO's unpaired records (one completion and a boolean label, true = desirable), also recognised per record:

    LLaMA-Factory kto, sharegpt       {"messages" | "conversations": [...], "label" | "kto_tag": bool, "system"?}
                                       (data/kto_en_demo.json: messages + label, its dataset_info column kto_tag)
    TRL, unpaired                     {"prompt": str | [messages], "completion": str | [messages], "label": bool}

Tokens: each side is its whole rendered text encoded once (the canonical-token rule of data/tokenization.py);
only the last response is trained (scored). Too long for max_seq_length: the pair is cut the same way on both
sides — the same number of the oldest prompt tokens (after BOS) leaves both, chosen by `labels.kept_lengths` on
the longer side, and each response keeps its head and its closing token — or dropped (truncation: drop).
"""
import re
from dataclasses import dataclass, replace

import numpy as np

from data import llamafactory
from data.formats import Example, RecordOptions, to_examples
from data.labels import kept_lengths
from data.records import DataError, Record
from data.tokenization import ExampleTokenizer, Segment, Tokenized

HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
PAIR_FIELDS = ("chosen", "rejected")
KTO_LABELS = ("label", "kto_tag")  # TRL's and LLaMA-Factory's name of an unpaired record's label


@dataclass(frozen=True)
class PairExample:
    chosen: Example
    rejected: Example


def _messages_side(record: Record, value, where: str) -> list:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise DataError(record.source, record.line, f"field '{where}' is {type(value).__name__}, expected a list of "
                        "messages", kind="wrong type")
    return value


def _hh_messages(record: Record, text: str, where: str) -> list[dict]:
    """An HH-RLHF transcript as messages."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(record.source, record.line, f"field '{where}' is not an HH-RLHF transcript "
                        "(\\n\\nHuman: … \\n\\nAssistant: …)", kind="malformed transcript")
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def _sides(record: Record) -> tuple[dict, dict]:
    """The two sides of a preference record, each as a record of an SFT layout."""
    data = record.data
    chosen, rejected = data["chosen"], data["rejected"]
    keep = {k: data[k] for k in ("system", "tools") if k in data}
    if "conversations" in data:  # LLaMA-Factory sharegpt ranking
        turns = _messages_side(record, data["conversations"], "conversations")
        for name in PAIR_FIELDS:
            if not isinstance(data[name], dict):
                raise DataError(record.source, record.line, f"field '{name}' is {type(data[name]).__name__}, expected "
                                "a message {\"from\", \"value\"}", kind="wrong type")
        return tuple({"conversations": turns + [data[name]], **keep} for name in PAIR_FIELDS)
    if "instruction" in data:  # LLaMA-Factory alpaca ranking
        base = {k: data[k] for k in ("instruction", "input") if k in data}
        return tuple({**base, "output": data[name]} for name in PAIR_FIELDS)
    prompt = data.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:  # HH-RLHF
            return tuple({"messages": _hh_messages(record, data[name], name)} for name in PAIR_FIELDS)
        if isinstance(prompt, str):
            return tuple({"instruction": prompt, "output": data[name], **keep} for name in PAIR_FIELDS)
        prompt = _messages_side(record, prompt, "prompt")
        return tuple({"messages": prompt + [{"role": "assistant", "content": data[name]}]} for name in PAIR_FIELDS)
    sides = [_messages_side(record, data[name], name) for name in PAIR_FIELDS]
    if isinstance(prompt, list):
        prefix = _messages_side(record, prompt, "prompt")
    elif isinstance(prompt, str) and not (sides[0] and sides[0][0].get("role") == "user"
                                          and sides[0][0].get("content") == prompt):
        prefix = [{"role": "user", "content": prompt}]
    else:
        prefix = []
    return tuple({"messages": prefix + side} for side in sides)


def _one(record: Record, data: dict, template, options: RecordOptions, name: str) -> Example:
    examples = to_examples(Record(data, record.source, record.line), template, options)
    if len(examples) != 1 or examples[0].document:
        raise DataError(record.source, record.line, f"the {name} side is not one dialogue", kind="malformed pair")
    return examples[0]


def to_pair(record: Record, template, options: RecordOptions = RecordOptions()) -> list[PairExample]:
    """A preference record → its pair, both sides with the same prompt (else a DataError). A record of a
    LLaMA-Factory `ranking` entry (`options.layout`) is converted by its columns and tags first."""
    if options.layout is not None:
        record = llamafactory.convert(record, options.layout)
        options = replace(options, layout=None)
    data = record.data
    if not isinstance(data, dict) or not all(data.get(name) is not None for name in PAIR_FIELDS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(record.source, record.line, f"not a preference record (keys {keys}): expected 'chosen' and "
                        "'rejected' (with 'conversations', 'instruction' or 'prompt', or whole transcripts)",
                        kind="unrecognised record")
    chosen, rejected = (_one(record, side, template, options, name) for side, name in zip(_sides(record), PAIR_FIELDS))
    prompt_of = (lambda e: e.messages[:-1]) if chosen.messages else (lambda e: e.pieces[:-1])
    if prompt_of(chosen) != prompt_of(rejected) or bool(chosen.messages) != bool(rejected.messages):
        raise DataError(record.source, record.line, "chosen and rejected do not share their prompt (they may differ "
                        "only in the last assistant turn)", kind="prompts differ")
    if chosen.messages and chosen.messages[-1]["role"] != "assistant":
        raise DataError(record.source, record.line, "the chosen side does not end with an assistant turn",
                        kind="empty response")
    return [PairExample(chosen, rejected)]


@dataclass(frozen=True)
class KtoExample:
    example: Example
    label: bool  # desirable


def _kto_sft_record(record: Record) -> dict:
    """An unpaired KTO record as a record of an SFT layout."""
    data = record.data
    if "completion" in data:  # TRL unpaired
        prompt, completion = data.get("prompt"), data["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return {"instruction": prompt, "output": completion}
        prefix = [{"role": "user", "content": prompt}] if isinstance(prompt, str) \
            else _messages_side(record, prompt, "prompt")
        answer = [{"role": "assistant", "content": completion}] if isinstance(completion, str) \
            else _messages_side(record, completion, "completion")
        return {"messages": prefix + answer}
    return {k: data[k] for k in ("messages", "conversations", "system", "tools") if k in data}


def to_kto(record: Record, template, options: RecordOptions = RecordOptions()) -> list[KtoExample]:
    """An unpaired KTO record → its example (the last assistant turn is the completion) and label."""
    data = record.data
    found = [name for name in KTO_LABELS if isinstance(data, dict) and name in data]
    if not found or not any(k in data for k in ("messages", "conversations", "completion")):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(record.source, record.line, f"not a KTO record (keys {keys}): expected 'messages' (or "
                        "'conversations', or 'prompt' + 'completion') and a boolean 'label' (or 'kto_tag')",
                        kind="unrecognised record")
    label = data[found[0]]
    if not isinstance(label, bool):
        raise DataError(record.source, record.line, f"field '{found[0]}' is {type(label).__name__}, expected a "
                        "boolean (true: desirable)", kind="wrong type")
    example = _one(record, _kto_sft_record(record), template, options, "completion")
    if example.messages and example.messages[-1]["role"] != "assistant":
        raise DataError(record.source, record.line, "the record does not end with an assistant turn",
                        kind="empty response")
    return [KtoExample(example, label)]


def last_response(segment: Segment) -> tuple[int, int]:
    """[start, end) of the last trained run of a segment (the scored response with its closing token)."""
    trained = np.flatnonzero(segment.trained)
    end = int(trained[-1]) + 1
    gaps = np.flatnonzero(np.diff(trained) > 1)
    start = int(trained[gaps[-1] + 1]) if gaps.size else int(trained[0])
    return start, end


class PairTokenizer:
    """Callable: a batch of PairExamples → for each, a `Tokenized` with two segments (chosen, rejected), only the
    last response of each trained, cut the same way on both sides (module docstring)."""

    def __init__(self, tokenizer, max_seq_length: int, truncation: str = "proportional"):
        self.whole = ExampleTokenizer(tokenizer, 1 << 40, truncation)  # each side whole: cut below, as a pair
        self.max_seq_length, self.truncation = max_seq_length, truncation
        self.head = len(self.whole.head)

    def __call__(self, pairs: list[PairExample]) -> list[Tokenized]:
        sides = self.whole([example for pair in pairs for example in (pair.chosen, pair.rejected)])
        return [self._pair(chosen, rejected) for chosen, rejected in zip(sides[::2], sides[1::2])]

    def tagged(self, batch):
        results = self([pair for _, pair in batch])
        return [(tag, result) for (tag, _), result in zip(batch, results)]

    def _pair(self, chosen: Tokenized, rejected: Tokenized) -> Tokenized:
        for side in (chosen, rejected):
            if side.error is not None:
                return Tokenized([], error=side.error)
        segments = [scored_only(side.segments[0]) for side in (chosen, rejected)]
        starts = [last_response(s)[0] for s in segments]
        longest = max(len(s.input_ids) for s in segments)
        if longest <= self.max_seq_length:
            return Tokenized(segments)
        if self.truncation == "drop":
            return Tokenized([], truncated=True)
        head, budget = self.head, self.max_seq_length - self.head - 1  # room for prompt + response body
        prompt = min(starts) - head
        response = max(len(s.input_ids) - start - 1 for s, start in zip(segments, starts))
        kept_prompt, _ = kept_lengths(prompt, response, budget, self.truncation)
        cut = prompt - kept_prompt  # the oldest prompt tokens after the head, on both sides
        if any(not np.array_equal(s.input_ids[head:head + cut], segments[0].input_ids[head:head + cut])
               for s in segments):
            return Tokenized([], error=DataError("", None, "chosen and rejected tokenize their prompts differently "
                                                 "where the pair must be cut", kind="prompts differ"))
        cut_segments = []
        for s, start in zip(segments, starts):
            body = min(len(s.input_ids) - start - 1, self.max_seq_length - 1 - (start - cut))  # + the closing token
            keep = np.r_[np.arange(head), np.arange(head + cut, start + body), len(s.input_ids) - 1]
            cut_segments.append(Segment(s.input_ids[keep], s.trained[keep]))
        prompt_lost = kept_prompt == 0 and prompt > 0
        return Tokenized(cut_segments, truncated=True, prompt_lost=prompt_lost)


class KtoTokenizer:
    """Callable: a batch of KtoExamples → for each, a `Tokenized` with one segment, only its last response trained
    (the completion), and the example's label. Rendering, the canonical-token rule and truncation are
    ExampleTokenizer's (SFT's)."""

    def __init__(self, tokenizer, max_seq_length: int, truncation: str = "proportional"):
        self.examples = ExampleTokenizer(tokenizer, max_seq_length, truncation)

    def __call__(self, batch: list[KtoExample]) -> list[Tokenized]:
        results = self.examples([item.example for item in batch])
        return [Tokenized([scored_only(s) for s in result.segments], result.truncated, result.prompt_lost,
                          result.error, item.label) if result.error is None and result.segments else result
                for item, result in zip(batch, results)]

    def tagged(self, batch):
        results = self([item for _, item in batch])
        return [(tag, result) for (tag, _), result in zip(batch, results)]


def scored_only(segment: Segment) -> Segment:
    """The segment with only its last response trained (earlier assistant turns are context in a pair)."""
    start, end = last_response(segment)
    trained = np.zeros_like(segment.trained)
    trained[start:end] = True
    return Segment(segment.input_ids, trained)
