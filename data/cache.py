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
packing, samples are packed within a shard.

Every rank of every node builds. The files are cut into pieces, a plan that depends on the files and
`piece_bytes` only (never on the number of ranks): an uncompressed JSON-lines file by byte range, a
Parquet file by row groups, any other file whole. Piece i is built by global rank i mod world_size into
`<cache_dir>/.build-<key>/`: its shards, then `piece-0000i.json` (written last, renamed into place) that
marks it finished. The rank that finds every piece finished (global rank 0) writes meta.json and renames
the folder to `<key>`; the others wait for that folder to appear (the progress is shared through the
cache folder, not a collective, so no process-group time-out bounds a build). The result is the same
bytes whatever the number of ranks. A build killed at any point resumes from its finished pieces (never
rebuilt); a piece without its marker is built again from scratch (its half-written shard files are
overwritten, never read). A data error is recorded (`piece-0000i.failed.json`, or `failed.json` when the
whole build has no usable record) for the ranks that wait; the rank of a piece clears its record when it
tries the piece again. A failed build leaves its `.build-<key>` folder, never a cache. `cache_dir`
must therefore be on a filesystem every rank sees. Opening a cache reads meta.json only; shards are
memory-mapped on first use.

A sample's line is counted from the start of its piece; a shard's `line_offset` in meta.json (the line
breaks of the file before the piece) makes it the line of the file.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data.formats import Example, RecordOptions, to_examples
from data.labels import IGNORE_INDEX
from data.packing import pack_lengths
from data.columnar import parquet_row_groups
from data.readers import Span, file_format, json_layout, opened, read_records
from data.preference import KtoTokenizer, PairTokenizer, to_kto, to_pair
from data.records import BadRecords, DataError
from data.templates import ChatTemplate, PromptTemplate
from data.tokenization import ExampleTokenizer, Segment, tokenize_batches
from general_util.dist import current
from general_util.faults import fire
from general_util.fingerprints import tokenizer_fingerprint
from general_util.logging import progress_bar

CACHE_VERSION = 4  # bump when tokenization or the on-disk layout changes, here only (3: whole-text encoding, data/tokenization.py; 4: pieces built by every rank)
ROW = np.dtype([("token_start", "<i8"), ("segment_start", "<i8")])
SEGMENT = np.dtype([("length", "<i4"), ("file", "<i4"), ("line", "<i8")])
BATCH_EXAMPLES = 256  # examples per tokenization task
WAIT_SECONDS = 0.5  # how often a rank that has built its pieces looks for the others' (no time limit)
logger = logging.getLogger(__name__)


def file_fingerprints(files: list[Path]) -> list[dict]:
    return [{"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            for path in files for stat in [path.stat()]]


class BuildSettings:
    """Everything a build depends on; `inputs()` is what the cache key hashes."""

    def __init__(self, files: list[Path], tokenizer, template: PromptTemplate | ChatTemplate, max_seq_length: int,
                 packing: bool, on_bad_record: str, shard_tokens: int, num_proc: int, truncation: str = "proportional",
                 record_options: RecordOptions = RecordOptions(), text_documents: str = "auto", name: str = "main",
                 piece_bytes: int = 1 << 26, kind: str = "sft"):
        self.files, self.tokenizer, self.template = files, tokenizer, template
        self.kind = kind  # sft: examples, a row per sample (or packed) | preference: pairs, a row per pair (data/preference.py)
        # | kto: unpaired examples, a row each with its label (data/preference.py)
        self.max_seq_length, self.packing, self.on_bad_record = max_seq_length, packing, on_bad_record
        self.shard_tokens, self.num_proc, self.truncation = shard_tokens, num_proc, truncation
        self.record_options, self.text_documents, self.name = record_options, text_documents, name
        self.piece_bytes = piece_bytes

    def inputs(self) -> dict:
        template = {"chat": self.tokenizer.chat_template} if isinstance(self.template, ChatTemplate) \
            else asdict(self.template)
        return {"version": CACHE_VERSION, "files": file_fingerprints(self.files),
                "tokenizer": tokenizer_fingerprint(self.tokenizer), "template": template,
                "max_seq_length": self.max_seq_length, "packing": self.packing, "truncation": self.truncation,
                "record_options": asdict(self.record_options), "text_documents": self.text_documents,
                "on_bad_record": self.on_bad_record, "shard_tokens": self.shard_tokens,
                "piece_bytes": self.piece_bytes,
                **({"kind": self.kind} if self.kind != "sft" else {})}

    def converter(self):
        """record → its examples (sft), pairs (preference) or labelled examples (kto)."""
        return {"preference": to_pair, "kto": to_kto}.get(self.kind, to_examples)

    def example_tokenizer(self):
        kind = {"preference": PairTokenizer, "kto": KtoTokenizer}.get(self.kind, ExampleTokenizer)
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
            parts = ("tokens", "trained", "rows", "segments") + (("label",) if "label" in self.meta["shards"][number] else ())
            self._shards[number] = {part: np.load(self.directory / f"{name}.{part}.npy", mmap_mode="r")
                                    for part in parts}
        return self._shards[number]

    def _number(self, index: int) -> int:
        return int(np.searchsorted(self.row_ends, index, side="right"))

    def _span(self, index: int) -> tuple[dict[str, np.ndarray], slice, slice]:
        """Shard arrays of row `index`, and the row's token and segment slices in them (a labelled shard's
        segment slice also indexes its `label` array, one per row: KTO rows hold one segment)."""
        number = self._number(index)
        shard = self._shard(number)
        local = index - (int(self.row_ends[number - 1]) if number else 0)
        (token_start, segment_start), (token_end, segment_end) = shard["rows"][local], shard["rows"][local + 1]
        return shard, slice(token_start, token_end), slice(segment_start, segment_end)

    def row_tokens(self) -> np.ndarray:
        """The number of tokens of every row (from the shards' row tables; no token is read)."""
        return np.concatenate([np.diff(self._shard(number)["rows"]["token_start"])
                               for number in range(len(self.meta["shards"]))])

    def row(self, index: int) -> dict:
        """`input_ids`, `labels` (-100 where untrained) and `seq_lens` (lengths of the samples in the row)."""
        shard, tokens, segments = self._span(index)
        input_ids = shard["tokens"][tokens].astype(np.int64)
        labels = np.where(shard["trained"][tokens], input_ids, IGNORE_INDEX)
        row = {"input_ids": input_ids.tolist(), "labels": labels.tolist(),
               "seq_lens": shard["segments"][segments]["length"].tolist()}
        if "label" in shard:  # a KTO row: its example's label
            row["label"] = bool(shard["label"][segments.start])
        return row

    def locations(self, index: int) -> list[str]:
        """"file:line" of every sample in row `index`."""
        shard, _, segments = self._span(index)
        files, offset = self.meta["inputs"]["files"], self.meta["shards"][self._number(index)]["line_offset"]
        return [f"{files[file]['path']}:{line + offset}"
                for file, line in shard["segments"][segments][["file", "line"]].tolist()]


class ShardWriter:
    """Collects segments and writes them a shard at a time (packed into rows when `packing`)."""

    def __init__(self, directory: Path, max_seq_length: int, packing: bool, shard_tokens: int, prefix: str = "shard"):
        self.directory, self.max_seq_length, self.packing, self.prefix = directory, max_seq_length, packing, prefix
        self.shard_tokens = shard_tokens
        self.buffer: list[tuple[Segment, int, int]] = []  # (segment, file index, line)
        self.joins: list[bool] = []  # per buffered segment: it shares the previous one's row (a preference pair)
        self.labels: list[bool | None] = []  # per buffered segment: its row's KTO label (None: unlabelled)
        self.buffered_tokens = 0
        self.shards: list[dict] = []

    def add(self, segment: Segment, file_index: int, line: int) -> None:
        self.add_row([segment], file_index, line)

    def add_row(self, segments: list[Segment], file_index: int, line: int, label: bool | None = None) -> None:
        """Segments that share one row without packing (a preference pair: chosen, rejected; so a pair is never
        split across micro-batches or ranks)."""
        for number, segment in enumerate(segments):
            self.buffer.append((segment, file_index, line))
            self.joins.append(number > 0)
            self.labels.append(label)
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
        name = f"{self.prefix}-{len(self.shards):05d}"
        arrays = {
            "tokens": np.concatenate([segment.input_ids for segment, _, _ in segments]),
            "trained": np.concatenate([segment.trained for segment, _, _ in segments]),
            "rows": np.array(list(zip(token_ends[row_ids], row_ids)), dtype=ROW),
            "segments": np.array([(lengths[i], f, line) for i, (_, f, line) in zip(order, segments)], dtype=SEGMENT),
        }
        labelled = any(label is not None for label in self.labels)
        if labelled:  # KTO: per segment (a row's first segment's is read), only in caches of labelled examples
            arrays["label"] = np.array([bool(self.labels[i]) for i in order], dtype=np.bool_)
        for part, array in arrays.items():  # written aside and renamed: a file of this name is always whole
            temporary = self.directory / f".{name}.{part}.{uuid.uuid4().hex[:8]}.npy"
            np.save(temporary, array)
            os.replace(temporary, self.directory / f"{name}.{part}.npy")
        self.shards.append({"name": name, "rows": len(rows), "samples": len(segments),
                            "tokens": int(token_ends[-1]), "trained_tokens": int(arrays["trained"].sum()),
                            **({"label": True} if labelled else {})})
        self.buffer, self.joins, self.labels, self.buffered_tokens = [], [], [], 0


@dataclass
class Piece:
    """A part of the corpus built as a unit: one span of a file cut into spans, or whole files (files smaller
    than `piece_bytes` are grouped, so that packing is not cut at each of a folder of small files)."""
    parts: list[tuple[int, Span | None]]  # (file index, span or None for the whole file)

    @property
    def span(self) -> Span | None:
        return self.parts[0][1]


def plan_pieces(settings: "BuildSettings") -> list[Piece]:
    """The pieces of the build, from the files and `piece_bytes` alone (every rank computes the same plan): an
    uncompressed JSON-lines file by byte range, a Parquet file by row groups, any other file whole; whole files
    are grouped up to `piece_bytes`."""
    pieces, group, group_bytes = [], [], 0

    def close_group() -> None:
        nonlocal group, group_bytes
        if group:
            pieces.append(Piece(group))
        group, group_bytes = [], 0

    for index, path in enumerate(settings.files):
        kind, size = file_format(path), path.stat().st_size
        if size <= settings.piece_bytes:
            spans = [None]
        elif kind == "parquet":
            spans, start, total = [], 0, 0
            groups = parquet_row_groups(path)
            for number, (_, row_group_bytes) in enumerate(groups):
                total += row_group_bytes
                if total >= settings.piece_bytes or number == len(groups) - 1:
                    spans.append(Span("row_groups", start, number + 1))
                    start, total = number + 1, 0
        elif path.suffix in (".jsonl", ".json", "") and (kind == "jsonl" or json_layout(path) == "lines"):
            spans = [Span("bytes", start, min(start + settings.piece_bytes, size))
                     for start in range(0, size, settings.piece_bytes)]
        else:
            spans = [None]
        if spans == [None]:
            if group_bytes + size > settings.piece_bytes:
                close_group()
            group.append((index, None))
            group_bytes += size
        else:
            close_group()
            pieces += [Piece([(index, span)]) for span in spans]
    close_group()
    return pieces


class PieceBuild:
    """The state of one piece being built: its bad records, counts and shard writer."""

    def __init__(self, directory: Path, settings: "BuildSettings", number: int, piece: Piece):
        self.directory, self.settings, self.number, self.piece = directory, settings, number, piece
        self.bad = PieceBadRecords(settings.on_bad_record)
        self.writer = ShardWriter(directory, settings.max_seq_length, settings.packing, settings.shard_tokens,
                                  prefix=f"piece-{number:05d}")
        self.counts = {"records": 0, "examples": 0, "truncated": 0, "prompt_lost": 0, "dropped_too_long": 0}
        self.failed = False

    def file_line(self, error: DataError) -> DataError:
        """`error` with its line (counted from the span's start) made the file's line."""
        file, span = self.piece.parts[0]
        path = self.settings.files[file]
        if error.line is None or error.source != str(path) or span is None or span.unit != "bytes" or span.start == 0:
            return error
        return DataError(error.source, error.line + lines_before(path, span.start), error.reason, error.kind)

    def batches(self, progress: "BuildProgress") -> Iterator[list[tuple[tuple[int, int], Example]]]:
        """The piece's examples tagged with their provenance (file index, line), BATCH_EXAMPLES at a time, and
        an empty batch that ends the piece; counts the records read (good ones and those a reader rejected)."""
        def rejected(error: DataError) -> None:
            self.counts["records"] += 1
            self.bad(error)

        batch, settings = [], self.settings
        convert = settings.converter()
        try:
            for file, span in self.piece.parts:
                for record in read_records(settings.files[file], rejected, settings.text_documents, progress.read, span):
                    self.counts["records"] += 1
                    try:
                        batch += [((file, record.line), example)
                                  for example in convert(record, settings.template, settings.record_options)]
                    except DataError as error:
                        self.bad(error)
                    if len(batch) >= BATCH_EXAMPLES:
                        yield batch
                        batch = []
        except DataError as error:
            self.failed = True
            raise self.file_line(error) from None
        if batch:
            yield batch
        yield []

    def add(self, results: list, progress: "BuildProgress") -> None:
        try:
            for (file_index, line), result in results:
                if result.error is not None:
                    self.bad(DataError(str(self.settings.files[file_index]), line, result.error.reason,
                                       result.error.kind))
                    continue
                if result.dropped:
                    self.counts["dropped_too_long"] += 1
                    continue
                self.counts["examples"] += 1
                self.counts["truncated"] += result.truncated
                self.counts["prompt_lost"] += result.prompt_lost
                rows = [result.segments] if self.settings.kind != "sft" else [[s] for s in result.segments]
                for segments in rows:  # a preference pair shares one row; a KTO row carries its label
                    self.writer.add_row(segments, file_index, line, result.label)
                    progress.add_tokens(sum(len(segment.input_ids) for segment in segments))
        except DataError as error:
            self.failed = True
            raise self.file_line(error) from None

    def finish(self) -> None:
        """Write the last shard, then the marker `piece-<number>.json` (counts, skipped records, line breaks
        of the span, shards), renamed into place last."""
        self.writer.flush()
        fire("piece", self.number)  # test-only: a kill here leaves the piece's shards written, its marker missing
        (file, span) = self.piece.parts[0]
        marker = {"piece": self.number, "file": file, "span": None if span is None else asdict(span),
                  "files": [index for index, _ in self.piece.parts], "rank": current().rank,
                  "counts": self.counts, "skipped": self.bad.counts,
                  "first": [[e.source, e.line, e.reason] for e in self.bad.first_errors],
                  "newlines": span.newlines if span is not None else 0, "shards": self.writer.shards}
        _write_atomically(self.directory / f"piece-{self.number:05d}.json", marker)


class BuildProgress:
    """A bar on global rank 0 (for the pieces it builds): pieces and bytes read, tokens, tokens/s, and the ETA
    from the bytes still to read; a large corpus takes hours, and a silent build looks hung."""

    def __init__(self, settings: BuildSettings, pieces: list[Piece]):
        total = sum(_piece_bytes(settings, piece) for piece in pieces)
        self.pieces, self.pieces_done, self.tokens, self.started = len(pieces), 0, 0, time.perf_counter()
        self.bar = progress_bar(f"tokenizing {settings.name}", total, current(), unit="B", unit_scale=True,
                                unit_divisor=1024, mininterval=2.0, leave=True)
        self.refresh()

    def read(self, count: int) -> None:
        self.bar.update(count)

    def piece_done(self) -> None:
        self.pieces_done += 1
        self.refresh()

    def add_tokens(self, count: int) -> None:
        self.tokens += count

    def refresh(self) -> None:
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"pieces {self.pieces_done}/{self.pieces}, {self.tokens:,} tokens, "
                                 f"{rate:,.0f} tokens/s", refresh=False)

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def _piece_bytes(settings: BuildSettings, piece: Piece) -> int:
    """The bytes the piece reads (Parquet: decoded), for the progress bar."""
    total = 0
    for file, span in piece.parts:
        if span is None:
            total += settings.files[file].stat().st_size
        elif span.unit == "bytes":
            total += span.end - span.start
        else:
            total += sum(size for _, size in parquet_row_groups(settings.files[file])[span.start:span.end])
    return total


class PieceBadRecords(BadRecords):
    """BadRecords that also keep the first errors whole, so that their lines can be made file lines later."""

    def __init__(self, policy: str):
        super().__init__(policy)
        self.first_errors: list[DataError] = []

    def __call__(self, error: DataError) -> None:
        if self.policy == "skip" and len(self.first_errors) < self.keep:
            self.first_errors.append(error)
        super().__call__(error)


def lines_before(path: Path, offset: int) -> int:
    """Line breaks in the first `offset` bytes of an uncompressed file (read in 1 MiB blocks)."""
    count, left = 0, offset
    with opened(path) as f:
        while left > 0 and (block := f.read(min(left, 1 << 20))):
            count += block.count(b"\n")
            left -= len(block)
    return count


def _write_atomically(path: Path, value: dict) -> None:
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    temporary.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def _markers(directory: Path, count: int) -> list[dict] | None:
    """The markers of all `count` pieces, or None while some piece is unfinished."""
    paths = [directory / f"piece-{number:05d}.json" for number in range(count)]
    if not all(path.is_file() for path in paths):
        return None
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def assemble(settings: BuildSettings, markers: list[dict], seconds: float) -> dict:
    """The statistics and shard list of a build from its pieces' markers: counts summed, skipped records
    merged (their lines made file lines), each shard's line offset in its file."""
    counts = {key: sum(marker["counts"][key] for marker in markers) for key in markers[0]["counts"]}
    skipped, first, shards, offsets = Counter(), [], [], {}
    for marker in markers:
        offset = offsets.get(marker["file"], 0)
        skipped.update(marker["skipped"])
        first += [str(DataError(source, None if line is None else line + offset, reason))
                  for source, line, reason in marker["first"]]
        shards += [{**shard, "line_offset": offset} for shard in marker["shards"]]
        offsets[marker["file"]] = offset + marker["newlines"]
    if counts["examples"] == 0:
        files = settings.files
        where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
        dropped = f", {counts['dropped_too_long']} too long (truncation=drop)" if counts["dropped_too_long"] else ""
        raise DataError(where, None, f"no usable records: all {skipped.total()} skipped {dict(skipped)}{dropped}",
                        kind="no usable records")
    totals = {key: sum(shard[key] for shard in shards) for key in ("rows", "samples", "tokens", "trained_tokens")}
    bad = {"skipped": skipped.total(), "by_reason": dict(skipped.most_common()), "first": first[:BadRecords().keep]}
    return {**counts, **bad, **totals, "pieces": len(markers), "seconds": round(seconds, 3), "shards": shards}


def build_pieces(directory: Path, settings: BuildSettings, rank: int, world_size: int, published: Path | None) -> int:
    """Build the unfinished pieces of global rank `rank` (piece i is rank i mod world_size's) into `directory`,
    stopping if the cache appears at `published` (finished by a build that resumed); returns the number of
    pieces of the build. A DataError is recorded (`piece-<number>.failed.json`) for the waiting ranks."""
    pieces = plan_pieces(settings)
    mine = [number for number in range(rank, len(pieces), world_size)
            if not (directory / f"piece-{number:05d}.json").is_file()]
    for number in mine:  # a failure of an earlier try (a file unreadable then) is tried again
        (directory / f"piece-{number:05d}.failed.json").unlink(missing_ok=True)
    if mine:
        logger.info("token cache %s: building %d of its %d pieces (rank %d of %d) with %d process(es)", directory.name,
                    len(mine), len(pieces), rank, world_size, settings.num_proc)
    tokenizer = settings.example_tokenizer()
    progress = BuildProgress(settings, [pieces[number] for number in mine])
    started: deque[PieceBuild] = deque()  # pieces whose batches went to the tokenizer, oldest first

    def batches():
        for number in mine:
            if published is not None and published.is_dir():
                return
            started.append(PieceBuild(directory, settings, number, pieces[number]))
            yield from started[-1].batches(progress)
            progress.piece_done()

    try:  # one stream of batches through one pool of tokenizing processes for all of the rank's pieces
        for results in tokenize_batches(batches(), tokenizer, settings.num_proc):
            if results:
                started[0].add(results, progress)
            else:  # the piece's end
                started.popleft().finish()
            progress.refresh()
    except DataError as error:
        number = next((piece.number for piece in started if piece.failed), None)
        _record_failure(directory / (f"piece-{number:05d}.failed.json" if number is not None else "failed.json"),
                        error, rank)
        raise
    finally:
        progress.close()
    return len(pieces)


def _record_failure(path: Path, error: DataError, rank: int) -> None:
    _write_atomically(path, {"source": error.source, "line": error.line, "reason": error.reason, "kind": error.kind,
                             "rank": rank})


def _failure(directory: Path) -> DataError | None:
    """The DataError a rank recorded (a piece's, or the whole build's), if any."""
    path = next(iter(sorted(directory.glob("*failed.json"))), None)
    if path is None:
        return None
    failed = json.loads(path.read_text(encoding="utf-8"))
    return DataError(failed["source"], failed["line"], f"{failed['reason']} (the build failed on rank {failed['rank']})",
                     failed["kind"])


def build(directory: Path, settings: BuildSettings, rank: int = 0, world_size: int = 1,
          published: Path | None = None) -> dict | None:
    """Build `settings` into `directory` (resuming from its finished pieces) as `rank` of `world_size`, then wait
    for the other ranks' pieces (no time limit: until they are finished, one of them failed, or the cache
    appeared at `published`). Global rank 0 returns the statistics; the others return None."""
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    count = build_pieces(directory, settings, rank, world_size, published)
    while (markers := _markers(directory, count)) is None:
        if published is not None and published.is_dir():
            return None
        if (error := _failure(directory)) is not None:
            raise error
        time.sleep(WAIT_SECONDS)
    if rank != 0:
        return None
    try:
        stats = assemble(settings, markers, time.perf_counter() - started)
    except DataError as error:
        _record_failure(directory / "failed.json", error, rank)
        raise
    return stats


def _publish(directory: Path, final: Path, settings: BuildSettings, inputs: dict, stats: dict) -> None:
    """Write meta.json and rename the build folder to the cache's (atomic: a reader sees all or nothing); if
    another build finished first, its cache is kept and this one discarded."""
    logger.info("token cache %s built: %d records, %d skipped, %d tokens in %.1f s, %d pieces", final.name,
                stats["records"], stats["skipped"], stats["tokens"], stats["seconds"], stats["pieces"])
    shards = stats.pop("shards")
    meta = {"key": final.name, "inputs": inputs, "stats": stats, "shards": shards}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    try:
        os.rename(directory, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(directory)


def load_or_build(settings: BuildSettings, cache_dir: str | Path | None) -> TokenCache:
    """The cache for `settings`: opened when it exists, else built by every rank (see the module doc), each
    rank waiting for the cache folder to appear. `cache_dir=None`: a private temporary cache for this
    process, built by it alone and removed when it exits."""
    inputs = settings.inputs()
    if cache_dir is None:
        keep_alive = tempfile.TemporaryDirectory(prefix="token-cache-")
        final = Path(keep_alive.name) / cache_key(inputs)
        building = Path(keep_alive.name) / f".build-{final.name}"
        _publish(building, final, settings, inputs, build(building, settings))
        return TokenCache(final, built=True, keep_alive=keep_alive)
    final = Path(cache_dir) / cache_key(inputs)
    if final.is_dir():
        return TokenCache(final)
    ctx = current()
    building = Path(cache_dir) / f".build-{final.name}"
    stats = build(building, settings, ctx.rank, ctx.world_size, final)
    if stats is not None:
        _publish(building, final, settings, inputs, stats)
    while not final.is_dir():  # rank 0 is writing meta.json and renaming the folder
        if (error := _failure(building)) is not None:
            raise error
        time.sleep(WAIT_SECONDS)
    return TokenCache(final, built=True)
