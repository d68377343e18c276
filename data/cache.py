"""Token cache: a source's files tokenized once into memory-mapped shards, reused by later runs and by
every rank.

Layout of `<cache_dir>/<key>/`:

    meta.json                   what the key was computed from, the statistics of the build, the shards
    shard-00000.tokens.npy      token ids of all rows of the shard, back to back (uint16, or int32 for
                                vocabularies over 65,536)
    shard-00000.trained.npy     bool per token: trained (label = token id) or not (label = -100)
    shard-00000.rows.npy        per row: first token, first segment (plus one closing entry)
    shard-00000.segments.npy    per sample in a row: length, file (index into meta's files), line

The key hashes: every source file's resolved path, size and modification time (not its content: hashing
a corpus would take longer than opening its cache; `touch` a file to force a rebuild), the tokenizer
(its serialized vocabulary, merges, normalizer and special tokens), the prompt template's text and the
settings (max_seq_length, packing, on_bad_record, shard size), and CACHE_VERSION. A change in any of
them gives a new key, hence a rebuild; old caches are never deleted (remove the folder to reclaim space).

Building streams: records are read one by one, tokenized in batches (in `num_proc` worker processes),
and written one shard at a time, so memory is bounded by the shard size, not by the corpus. With
packing, samples are packed within a shard. Only global rank 0 builds, into a temporary folder renamed
into place when complete; the other ranks wait at a barrier, then read. `cache_dir` must therefore be on
a filesystem every rank sees. Opening a cache reads meta.json only; shards are memory-mapped on first use.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from data.formats import Example, RecordOptions, to_examples
from data.labels import IGNORE_INDEX
from data.packing import pack_lengths
from data.preference import PairTokenizer, to_pair
from data.readers import read_records
from data.records import BadRecords, DataError
from data.templates import ChatTemplate, PromptTemplate
from data.tokenization import ExampleTokenizer, Segment, tokenize_batches
from general_util.dist import barrier, current
from general_util.fingerprints import tokenizer_fingerprint
from general_util.logging import progress_bar

CACHE_VERSION = 3  # bump when tokenization or the on-disk layout changes (3: whole-text encoding, data/tokenization.py)
ROW = np.dtype([("token_start", "<i8"), ("segment_start", "<i8")])
SEGMENT = np.dtype([("length", "<i4"), ("file", "<i4"), ("line", "<i8")])
BATCH_EXAMPLES = 256  # examples per tokenization task
logger = logging.getLogger(__name__)


def file_fingerprints(files: list[Path]) -> list[dict]:
    return [{"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            for path in files for stat in [path.stat()]]


class BuildSettings:
    """Everything a build depends on; `inputs()` is what the cache key hashes."""

    def __init__(self, files: list[Path], tokenizer, template: PromptTemplate | ChatTemplate, max_seq_length: int,
                 packing: bool, on_bad_record: str, shard_tokens: int, num_proc: int, truncation: str = "proportional",
                 record_options: RecordOptions = RecordOptions(), text_documents: str = "auto", name: str = "main",
                 kind: str = "sft"):
        self.files, self.tokenizer, self.template = files, tokenizer, template
        self.kind = kind  # sft: examples, a row per sample (or packed) | preference: pairs, a row per pair (data/preference.py)
        self.max_seq_length, self.packing, self.on_bad_record = max_seq_length, packing, on_bad_record
        self.shard_tokens, self.num_proc, self.truncation = shard_tokens, num_proc, truncation
        self.record_options, self.text_documents, self.name = record_options, text_documents, name

    def inputs(self) -> dict:
        template = {"chat": self.tokenizer.chat_template} if isinstance(self.template, ChatTemplate) \
            else asdict(self.template)
        return {"version": CACHE_VERSION, "files": file_fingerprints(self.files),
                "tokenizer": tokenizer_fingerprint(self.tokenizer), "template": template,
                "max_seq_length": self.max_seq_length, "packing": self.packing, "truncation": self.truncation,
                "record_options": asdict(self.record_options), "text_documents": self.text_documents,
                "on_bad_record": self.on_bad_record, "shard_tokens": self.shard_tokens,
                **({"kind": self.kind} if self.kind != "sft" else {})}

    def converter(self):
        """record → its examples (sft) or pairs (preference)."""
        return to_pair if self.kind == "preference" else to_examples

    def example_tokenizer(self):
        kind = PairTokenizer if self.kind == "preference" else ExampleTokenizer
        return kind(self.tokenizer, self.max_seq_length, self.truncation)


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


class TokenCache:
    """A built cache, read-only: row i → its tokens, trained mask and samples, read lazily from the
    memory-mapped shards. Pickles without its memory maps (DataLoader workers reopen them)."""

    def __init__(self, directory: Path, built: bool = False, keep_alive=None):
        self.directory, self.built, self._keep_alive = Path(directory), built, keep_alive
        self.meta = json.loads((self.directory / "meta.json").read_text(encoding="utf-8"))
        self.row_ends = np.cumsum([shard["rows"] for shard in self.meta["shards"]])
        self._shards: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.row_ends[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}}

    def _shard(self, number: int) -> dict[str, np.ndarray]:
        if number not in self._shards:
            name = self.meta["shards"][number]["name"]
            self._shards[number] = {part: np.load(self.directory / f"{name}.{part}.npy", mmap_mode="r")
                                    for part in ("tokens", "trained", "rows", "segments")}
        return self._shards[number]

    def _span(self, index: int) -> tuple[dict[str, np.ndarray], slice, slice]:
        """Shard arrays of row `index`, and the row's token and segment slices in them."""
        number = int(np.searchsorted(self.row_ends, index, side="right"))
        shard = self._shard(number)
        local = index - (int(self.row_ends[number - 1]) if number else 0)
        (token_start, segment_start), (token_end, segment_end) = shard["rows"][local], shard["rows"][local + 1]
        return shard, slice(token_start, token_end), slice(segment_start, segment_end)

    def row(self, index: int) -> dict:
        """`input_ids`, `labels` (-100 where untrained) and `seq_lens` (lengths of the samples in the row)."""
        shard, tokens, segments = self._span(index)
        input_ids = shard["tokens"][tokens].astype(np.int64)
        labels = np.where(shard["trained"][tokens], input_ids, IGNORE_INDEX)
        return {"input_ids": input_ids.tolist(), "labels": labels.tolist(),
                "seq_lens": shard["segments"][segments]["length"].tolist()}

    def locations(self, index: int) -> list[str]:
        """"file:line" of every sample in row `index`."""
        shard, _, segments = self._span(index)
        files = self.meta["inputs"]["files"]
        return [f"{files[file]['path']}:{line}" for file, line in shard["segments"][segments][["file", "line"]].tolist()]


class ShardWriter:
    """Collects segments and writes them a shard at a time (packed into rows when `packing`)."""

    def __init__(self, directory: Path, max_seq_length: int, packing: bool, shard_tokens: int):
        self.directory, self.max_seq_length, self.packing = directory, max_seq_length, packing
        self.shard_tokens = shard_tokens
        self.buffer: list[tuple[Segment, int, int]] = []  # (segment, file index, line)
        self.joins: list[bool] = []  # per buffered segment: it shares the previous one's row (a preference pair)
        self.buffered_tokens = 0
        self.shards: list[dict] = []

    def add(self, segment: Segment, file_index: int, line: int) -> None:
        self.add_row([segment], file_index, line)

    def add_row(self, segments: list[Segment], file_index: int, line: int) -> None:
        """Segments that share one row without packing (a preference pair: chosen, rejected; so a pair is never
        split across micro-batches or ranks)."""
        for number, segment in enumerate(segments):
            self.buffer.append((segment, file_index, line))
            self.joins.append(number > 0)
            self.buffered_tokens += len(segment.input_ids)
        if self.buffered_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        lengths = [len(segment.input_ids) for segment, _, _ in self.buffer]
        rows = pack_lengths(lengths, self.max_seq_length) if self.packing else []
        if not self.packing:
            for i, join in enumerate(self.joins):
                rows[-1:] = [rows[-1] + [i]] if join else rows[-1:] + [[i]]
        order = [i for row in rows for i in row]
        segments = [self.buffer[i] for i in order]
        row_ids = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
        token_ends = np.concatenate([[0], np.cumsum([lengths[i] for i in order])])
        name = f"shard-{len(self.shards):05d}"
        arrays = {
            "tokens": np.concatenate([segment.input_ids for segment, _, _ in segments]),
            "trained": np.concatenate([segment.trained for segment, _, _ in segments]),
            "rows": np.array(list(zip(token_ends[row_ids], row_ids)), dtype=ROW),
            "segments": np.array([(lengths[i], f, line) for i, (_, f, line) in zip(order, segments)], dtype=SEGMENT),
        }
        for part, array in arrays.items():
            np.save(self.directory / f"{name}.{part}.npy", array)
        self.shards.append({"name": name, "rows": len(rows), "samples": len(segments),
                            "tokens": int(token_ends[-1]), "trained_tokens": int(arrays["trained"].sum())})
        self.buffer, self.joins, self.buffered_tokens = [], [], 0


def _batches(settings: BuildSettings, bad: BadRecords, progress: "BuildProgress",
             counts: dict) -> Iterator[list[tuple[tuple[int, int], Example]]]:
    """Examples tagged with their provenance (file index, line), BATCH_EXAMPLES at a time; counts the
    records read (`records`: good ones and those a reader rejected)."""
    def rejected(error: DataError) -> None:
        counts["records"] += 1
        bad(error)

    batch, convert = [], settings.converter()
    for file_index, path in enumerate(settings.files):
        for record in read_records(path, rejected, settings.text_documents, progress.read):
            counts["records"] += 1
            try:
                batch += [((file_index, record.line), example)
                          for example in convert(record, settings.template, settings.record_options)]
            except DataError as error:
                bad(error)
            if len(batch) >= BATCH_EXAMPLES:
                yield batch
                batch = []
        progress.file_done()
    if batch:
        yield batch


class BuildProgress:
    """A bar on the process that builds (global rank 0): files and bytes read, tokens, tokens/s, and the
    ETA from the bytes still to read; a large corpus takes hours, and a silent build looks hung."""

    def __init__(self, settings: BuildSettings):
        total = sum(path.stat().st_size for path in settings.files)
        self.files, self.files_done, self.tokens, self.started = len(settings.files), 0, 0, time.perf_counter()
        self.bar = progress_bar(f"tokenizing {settings.name}", total, current(), unit="B", unit_scale=True,
                                unit_divisor=1024, mininterval=2.0, leave=True)
        self.refresh()

    def read(self, count: int) -> None:
        self.bar.update(count)

    def file_done(self) -> None:
        self.files_done += 1
        self.refresh()

    def add_tokens(self, count: int) -> None:
        self.tokens += count

    def refresh(self) -> None:
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"files {self.files_done}/{self.files}, {self.tokens:,} tokens, {rate:,.0f} tokens/s",
                                 refresh=False)

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def build(directory: Path, settings: BuildSettings) -> dict:
    """Tokenize `settings.files` into `directory` (which must exist and be empty); returns the statistics."""
    started = time.perf_counter()
    bad = BadRecords(settings.on_bad_record)
    writer = ShardWriter(directory, settings.max_seq_length, settings.packing, settings.shard_tokens)
    counts = {"records": 0, "examples": 0, "truncated": 0, "prompt_lost": 0, "dropped_too_long": 0}
    tokenizer = settings.example_tokenizer()
    progress = BuildProgress(settings)
    try:
        for results in tokenize_batches(_batches(settings, bad, progress, counts), tokenizer, settings.num_proc):
            for (file_index, line), result in results:
                if result.error is not None:
                    bad(DataError(str(settings.files[file_index]), line, result.error.reason, result.error.kind))
                    continue
                if result.dropped:
                    counts["dropped_too_long"] += 1
                    continue
                counts["examples"] += 1
                counts["truncated"] += result.truncated
                counts["prompt_lost"] += result.prompt_lost
                rows = [result.segments] if settings.kind == "preference" else [[s] for s in result.segments]
                for segments in rows:
                    writer.add_row(segments, file_index, line)
                    progress.add_tokens(sum(len(segment.input_ids) for segment in segments))
            progress.refresh()
        writer.flush()
    finally:
        progress.close()
    if counts["examples"] == 0:
        files = settings.files
        where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
        dropped = f", {counts['dropped_too_long']} too long (truncation=drop)" if counts["dropped_too_long"] else ""
        raise DataError(where, None, f"no usable records: all {bad.total} skipped {dict(bad.counts)}{dropped}",
                        kind="no usable records")
    totals = {key: sum(shard[key] for shard in writer.shards) for key in ("rows", "samples", "tokens", "trained_tokens")}
    return {**counts, **bad.summary(), **totals,
            "seconds": round(time.perf_counter() - started, 3), "shards": writer.shards}


def _build_into(final: Path, settings: BuildSettings, inputs: dict) -> None:
    """Build in a temporary sibling folder and rename it into place (atomic: a reader sees all or nothing).
    If another process finished first, its cache is kept and this one discarded."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        logger.info("building token cache %s from %d file(s) with %d process(es)", final, len(settings.files),
                    settings.num_proc)
        stats = build(temporary, settings)
        logger.info("token cache %s built: %d records, %d skipped, %d tokens in %.1f s", final.name, stats["records"],
                    stats["skipped"], stats["tokens"], stats["seconds"])
        shards = stats.pop("shards")
        meta = {"key": final.name, "inputs": inputs, "stats": stats, "shards": shards}
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        try:
            os.rename(temporary, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def load_or_build(settings: BuildSettings, cache_dir: str | Path | None) -> TokenCache:
    """The cache for `settings`: opened when it exists, else built by global rank 0 while the other ranks
    wait. `cache_dir=None`: a private temporary cache for this process, removed when it exits."""
    inputs = settings.inputs()
    if cache_dir is None:
        keep_alive = tempfile.TemporaryDirectory(prefix="token-cache-")
        final = Path(keep_alive.name) / cache_key(inputs)
        _build_into(final, settings, inputs)
        return TokenCache(final, built=True, keep_alive=keep_alive)
    final = Path(cache_dir) / cache_key(inputs)
    built, error = False, None
    if current().is_main and not final.is_dir():
        try:
            _build_into(final, settings, inputs)
            built = True
        except Exception as e:  # noqa: BLE001 - re-raised after the barrier, so no rank waits forever
            error = e
    barrier()
    if error is not None:
        raise error
    if not final.is_dir():
        raise DataError(str(final), None, "token cache missing after rank 0 built it (or failed to): cache_dir must "
                        "be on a filesystem every rank can read; see rank 0's log", kind="cache missing")
    return TokenCache(final, built=built)
