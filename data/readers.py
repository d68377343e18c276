"""File formats → records with provenance (file, line).

    .jsonl        one JSON value per line (alpaca/BELLE, MOSS, `{"text": ...}` corpora)
    .json         a JSON list (WuDao, COIG, ShareGPT); one JSON object (one conversation per file, as MOSS
                  ships its SFT data, pretty-printed or not); or JSON lines (BELLE names them .json)
    wiki_00 ...   wikiextractor's `--json` output (JSON lines, no suffix)
    .txt          plain text: documents separated by blank lines or, in a file without any blank line
                  between two lines of text, one document per line (`text_documents` forces either)
    any of them + .gz or .zst (zstd: RedPajama, SlimPajama, Dolma and many Chinese web corpora ship .jsonl.zst)
    .parquet      one record per row, its columns the fields (the hub's format); `line` is the 1-based row
    .arrow        the same for Arrow IPC files (`datasets`' save_to_disk folders and cache)

A folder is searched recursively, except a `save_to_disk` folder (its state.json lists its files) and a folder
of hub-named shards (`data/train-00000-of-00002.parquet`, a clone of a hub dataset repository): only the
shards of the requested split are kept (data/columnar.py).

Readers stream: memory is bounded by one line (JSON lines, text), one list item (a JSON list is decoded item
by item from a sliding window of the file), one record batch (Parquet, Arrow), or one file for a file that
holds one JSON object. A bad record is passed to `on_error` (see `records.BadRecords`): the default raises;
a callback that returns makes the reader go on with the next record.

An uncompressed JSON-lines file can be read by byte range (a `Span`): the records whose line starts in
[start, end), numbered from the span's first byte (the cache's parallel build adds the lines before it).
"""
import codecs
import glob
import gzip
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from general_util.paths import resolve_path
from data.columnar import read_arrow, read_parquet, save_to_disk_files, split_of
from data.records import DataError, Record
from general_util.errors import ConfigError

TEXT_SUFFIXES = (".jsonl", ".json", ".txt")
COMPRESSIONS = (".gz", ".zst")
COLUMNAR_SUFFIXES = (".parquet", ".arrow")
SUFFIXES = TEXT_SUFFIXES + COLUMNAR_SUFFIXES
DATA_SUFFIXES = SUFFIXES + tuple(s + c for s in TEXT_SUFFIXES for c in COMPRESSIONS)
WIKIEXTRACTOR_NAME = re.compile(r"wiki_\d+")  # wikiextractor --json writes AA/wiki_00, AA/wiki_01, ... (JSON lines)
CHUNK_CHARS = 1 << 20  # characters of a JSON list decoded at a time
OnError = Callable[[DataError], None]


@dataclass
class Span:
    """A part of a file: bytes [start, end) of an uncompressed JSON-lines file (`bytes`), or row groups
    [start, end) of a Parquet file (`row_groups`). A byte span's reader sets `newlines` to the number of line
    breaks in [start, end): the sum over the spans before one is its first line's number less one."""
    unit: str
    start: int
    end: int
    newlines: int = 0


def raise_error(error: DataError) -> None:
    raise error


def expand_files(spec: str | list[str], suffixes: tuple[str, ...] = (), split: str = "train") -> list[Path]:
    """A file, a directory (its files with one of `suffixes`, recursively), a glob, or a list of any of
    these → a sorted, de-duplicated list of files. A directory saved by `datasets` gives the files its
    state.json lists, and one of hub-named shards (`train-00000-of-00002.parquet`) those of `split`. A spec
    matching nothing is an error."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in specs:
        path = resolve_path(item)
        if path.is_dir():
            found = save_to_disk_files(path, split) or _folder_files(path, suffixes, split)
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not found:
            raise DataError(str(item), None, "no such file, or no files match")
        files.extend(found)
    return list(dict.fromkeys(files))


def _folder_files(folder: Path, suffixes: tuple[str, ...], split: str) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts and (
        not suffixes or p.name.endswith(suffixes) or WIKIEXTRACTOR_NAME.fullmatch(p.name)))
    splits = {split_of(p) for p in found} - {None}
    if not splits:
        return found
    if split not in splits:
        raise DataError(str(folder), None, f"no shards of split {split!r} (named like {split}-00000-of-00001.parquet); "
                        f"it has {sorted(splits)}")
    return [p for p in found if split_of(p) == split]


def expand_source(spec: str | list[str], suffixes: tuple[str, ...], exclude: list[str] = (),
                  wudao_listed: set[Path] | None = None, split: str = "train") -> tuple[list[Path], int]:
    """`expand_files`, leaving out every file whose path below the spec's folder (the part of a glob before
    its first wildcard) contains one of the `exclude` substrings, as the original recipes left out paths
    containing `valid` or `test`. With `wudao_listed` (resolved paths), a file whose path below the folder
    contains `WuDaoCorpus` is left out too unless listed there (and unless a `coig_data.json`, which the
    original's TextDatasetUnify read first), as that reader did with its `wudao_sample_list`. Returns the files
    kept and how many were left out."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    kept, left_out = [], 0
    for item in specs:
        files = expand_files(item, suffixes, split)
        text = str(resolve_path(item))
        wildcard = min((text.index(c) for c in "*?[" if c in text), default=None)
        root = Path(text[:wildcard]) if wildcard is not None else Path(text)
        root = root if root.is_dir() else root.parent
        for path in files:
            below = str(path.resolve().relative_to(root.resolve())) if path.resolve().is_relative_to(root.resolve()) \
                else path.name
            unlisted_wudao = wudao_listed is not None and "WuDaoCorpus" in below and "coig_data.json" not in below \
                and path.resolve() not in wudao_listed
            if any(word in below for word in exclude) or unlisted_wudao:
                left_out += 1
            else:
                kept.append(path)
    if not kept:
        raise DataError(str(spec), None, f"every matching file was left out by exclude={list(exclude)}")
    return list(dict.fromkeys(kept)), left_out


def file_format(path: Path) -> str:
    """jsonl | json | txt | parquet | arrow, from the name (less .gz/.zst); wiki_NN files are JSON lines."""
    name = path.name
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    suffix = Path(name).suffix if not WIKIEXTRACTOR_NAME.fullmatch(name) else ".jsonl"
    if suffix not in SUFFIXES or name != path.name and suffix in COLUMNAR_SUFFIXES:
        raise DataError(str(path), None, f"unsupported file type {suffix!r}; use one of {', '.join(DATA_SUFFIXES)}")
    return suffix[1:]


def read_records(path: Path, on_error: OnError = raise_error, text_documents: str = "auto",
                 progress: Callable[[int], None] | None = None, span: Span | None = None) -> Iterator[Record]:
    """The records of one data file (or of one `span` of it), whatever its format. An unreadable file
    (corrupt gzip or zstd) or one without any record is reported as a bad record of the file. `progress` is
    called with the number of bytes read (of the file as stored; decoded bytes for Parquet and Arrow) since
    its last call."""
    readers = {"jsonl": lambda: read_jsonl(path, counted, progress, span),
               "json": lambda: read_json(path, counted, progress, span),
               "txt": lambda: read_text(path, counted, text_documents, progress),
               "parquet": lambda: read_parquet(path, None if span is None else range(span.start, span.end), progress),
               "arrow": lambda: read_arrow(path, progress)}
    kind = file_format(path)
    seen = 0  # records, good or bad

    def counted(error: DataError) -> None:
        nonlocal seen
        seen += 1
        on_error(error)

    try:
        for record in readers[kind]():
            seen += 1
            yield record
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        on_error(DataError(str(path), None, f"unreadable file ({e})", kind="unreadable file"))
        return
    except Exception as e:  # zstandard.ZstdError, pyarrow.ArrowInvalid: corrupt compressed or columnar data
        if type(e).__module__.split(".")[0] not in ("zstandard", "pyarrow"):
            raise
        on_error(DataError(str(path), None, f"unreadable file ({e})", kind="unreadable file"))
        return
    if seen == 0 and (span is None or span.start == 0):
        on_error(DataError(str(path), None, "empty file (no records)", kind="empty file"))


class CountingFile(io.RawIOBase):
    """A file read through, reporting how many bytes were read (of the file as stored) to `progress`."""

    def __init__(self, path: Path, progress: Callable[[int], None]):
        self.file, self.progress = open(path, "rb"), progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.file.readinto(buffer)
        if count:
            self.progress(count)
        return count

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()
        super().close()


def open_binary(path: Path, progress: Callable[[int], None] | None = None):
    """A binary reader of the file's content: decompressed as it is read for .gz (gzip) and .zst (zstandard)."""
    raw = io.BufferedReader(CountingFile(path, progress)) if progress else open(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.name.endswith(".zst"):
        import zstandard
        # read_across_frames: zstd files concatenated (`cat a.zst b.zst`) are one stream, as `zstd -d` reads them
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


@contextmanager
def opened(path: Path, progress: Callable[[int], None] | None = None):
    """open_binary as a context manager that also closes the file under a decompressing wrapper."""
    handle = open_binary(path, progress)
    try:
        yield handle
    finally:
        handle.close()
        inner = getattr(handle, "fileobj", None)
        if inner is not None:
            inner.close()


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), line_no, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                        kind="not valid UTF-8") from None


def _check_value(data, path: Path, line_no: int) -> None:
    if not isinstance(data, (dict, list)):
        raise DataError(str(path), line_no, f"expected a JSON object or list, got {type(data).__name__}",
                        kind="not a JSON object")


def numbered_lines(handle, span: Span | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a binary file, or of the lines starting in `span`'s bytes [start, end),
    numbered from 1 at the span's first byte; sets `span.newlines`. `handle` must be seekable for a span."""
    if span is None:
        yield from enumerate(handle, start=1)
        return
    position, newlines = 0, 0  # newlines: line breaks read at a byte in [start, end)

    def consumed(raw: bytes) -> None:
        nonlocal position, newlines
        position += len(raw)
        newlines += raw.endswith(b"\n") and span.start <= position - 1 < span.end

    if span.start > 0:  # the line holding byte start - 1 belongs to the span before (or ends right there)
        handle.seek(span.start - 1)
        position = span.start - 1
        consumed(handle.readline())
    while position < span.end:
        raw = handle.readline()
        if not raw:
            break
        yield newlines + 1, raw
        consumed(raw)
    span.newlines = newlines


def read_jsonl(path: Path, on_error: OnError = raise_error, progress=None, span: Span | None = None) -> Iterator[Record]:
    with opened(path, progress) as f:
        for line_no, raw in numbered_lines(f, span):
            try:
                text = _decode(raw, path, line_no)
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(str(path), line_no, f"malformed JSON ({e.msg})", kind="malformed JSON") from None
                _check_value(data, path, line_no)
            except DataError as error:
                on_error(error)
                continue
            yield Record(data, str(path), line_no)


def _text_chunks(handle) -> Iterator[str]:
    """A binary file as text, CHUNK_CHARS bytes at a time; undecodable bytes kept as lone surrogates."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    while chunk := handle.read(CHUNK_CHARS):
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def json_layout(path: Path) -> str:
    """`list` (the first non-blank character is `[`), `lines` (the first line holds a whole JSON value and more
    text follows: BELLE ships JSON lines named .json) or `object` (one JSON value, e.g. pretty-printed).
    Reads the file only up to where this is decided."""
    text = ""
    with opened(path) as f:
        chunks = _text_chunks(f)
        for chunk in chunks:
            text += chunk
            stripped = text.lstrip()
            if stripped[:1] == "[":
                return "list"
            first, newline, rest = stripped.partition("\n")
            if stripped and newline and rest.strip():
                break
    first, _, rest = text.lstrip().partition("\n")
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return "object"
    return "lines" if rest.strip() else "object"


def read_json(path: Path, on_error: OnError = raise_error, progress=None, span: Span | None = None) -> Iterator[Record]:
    """A JSON list, item by item, each with the line it starts on; or a file holding one JSON object (one
    record); or JSON lines (`json_layout`). Undecodable bytes spoil only the item that holds them; malformed
    JSON ends the file (the rest cannot be re-synchronised), reported as one bad record. Streams: a JSON-lines
    file line by line, a list through a window that holds the current item (not the file)."""
    layout = json_layout(path)
    if layout == "lines":
        yield from read_jsonl(path, on_error, progress, span)
    elif layout == "list":
        yield from _json_list(path, on_error, progress)
    else:
        with opened(path, progress) as f:
            text = "".join(_text_chunks(f))
        yield from _single_object(path, text, on_error)


def _json_list(path: Path, on_error: OnError, progress) -> Iterator[Record]:
    decoder, whitespace = json.JSONDecoder(), re.compile(r"\s*")
    with opened(path, progress) as f:
        chunks = _text_chunks(f)
        text, done = "", False
        line_no, counted_to = 1, 0

        def more() -> bool:
            nonlocal text, done
            for chunk in chunks:
                if chunk:
                    text += chunk
                    return True
            done = True
            return False

        def skip_space(pos: int) -> int:
            end = whitespace.match(text, pos).end()
            while end == len(text) and more():
                end = whitespace.match(text, end).end()
            return end

        def line_at(pos: int) -> int:
            nonlocal line_no, counted_to
            line_no += text.count("\n", counted_to, pos)
            counted_to = pos
            return line_no

        pos = skip_space(0) + 1  # past the `[`
        pos = skip_space(pos)
        if text.startswith("]", pos):
            return
        while True:
            if pos > CHUNK_CHARS:  # slide the window: drop the items already read
                line_at(pos)
                text, counted_to, pos = text[pos:], 0, 0
            item_line = line_at(pos)
            while True:
                try:
                    data, end = decoder.raw_decode(text, pos)
                    if end < len(text) or done or not more():
                        break
                except json.JSONDecodeError as e:
                    if done or not more():  # the item is incomplete only if the file ends within it
                        on_error(DataError(str(path), line_no + text.count("\n", counted_to, e.pos),
                                           f"malformed JSON ({e.msg}); the rest of the file is not read",
                                           kind="malformed JSON"))
                        return
            try:
                _check_parsed(data, path, item_line)
            except DataError as error:
                on_error(error)
            else:
                yield Record(data, str(path), item_line)
            pos = skip_space(end)
            if text.startswith(",", pos):
                pos = skip_space(pos + 1)
            elif text.startswith("]", pos):
                return
            else:
                on_error(DataError(str(path), line_at(pos), "malformed JSON (expected ',' or ']' after an item); "
                                   "the rest of the file is not read", kind="malformed JSON"))
                return


def _single_object(path: Path, text: str, on_error: OnError) -> Iterator[Record]:
    """A file holding one JSON value: one record, on the line where it starts."""
    line = text.count("\n", 0, len(text) - len(text.lstrip())) + 1
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        on_error(DataError(str(path), e.lineno, f"malformed JSON ({e.msg})", kind="malformed JSON"))
        return
    try:
        _check_parsed(data, path, line)
    except DataError as error:
        on_error(error)
        return
    yield Record(data, str(path), line)


def _check_parsed(data, path: Path, line_no: int) -> None:
    """A value parsed from text decoded with surrogateescape: valid UTF-8, and an object or list."""
    if _has_surrogates(data):
        raise DataError(str(path), line_no, "not valid UTF-8", kind="not valid UTF-8")
    _check_value(data, path, line_no)


def _has_surrogates(value) -> bool:
    """Whether a parsed JSON value holds text that is not valid UTF-8 (undecodable bytes, lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


TEXT_DOCUMENTS = ("auto", "blank_line", "line")


def text_layout(path: Path) -> str:
    """`blank_line` when some blank line separates two lines of text, else `line` (one document per line).
    Reads only up to the first such blank line."""
    seen_text = blank_after_text = False
    with opened(path) as f:
        for raw in f:
            if not raw.strip():
                blank_after_text = seen_text
            elif blank_after_text:
                return "blank_line"
            else:
                seen_text = True
    return "line"


def read_text(path: Path, on_error: OnError = raise_error, text_documents: str = "auto",
              progress=None) -> Iterator[Record]:
    """Plain text: one record `{"text": ...}` per document, a block of non-blank lines (`blank_line`) or a
    line (`line`); `auto` picks by `text_layout`. A line that is not UTF-8 spoils its document."""
    if text_documents not in TEXT_DOCUMENTS:
        raise ConfigError(f"text_documents={text_documents!r}: use one of {', '.join(TEXT_DOCUMENTS)}")
    per_line = (text_layout(path) if text_documents == "auto" else text_documents) == "line"
    lines: list[str] = []
    first_line, bad = 0, False

    def flush() -> Iterator[Record]:
        if lines and not bad:
            yield Record({"text": "".join(lines).strip()}, str(path), first_line)

    with opened(path, progress) as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip() or per_line:
                yield from flush()
                lines, bad = [], False
                if not raw.strip():
                    continue
            if not lines and not bad:
                first_line = line_no
            try:
                lines.append(_decode(raw, path, line_no))
            except DataError as error:
                on_error(error)
                bad = True
    yield from flush()
