"""File formats → records with provenance (file, line).

    .jsonl        one JSON value per line (alpaca/BELLE, MOSS, `{"text": ...}` corpora)
    .json         a JSON list (WuDao, COIG, ShareGPT); one JSON object (one conversation per file, as MOSS
                  ships its SFT data, pretty-printed or not); or JSON lines (BELLE names them .json)
    wiki_00 ...   wikiextractor's `--json` output (JSON lines, no suffix)
    .txt          plain text: documents separated by blank lines or, in a file without any blank line
                  between two lines of text, one document per line (`text_documents` forces either)
    any of them + .gz

Readers stream: memory is bounded by one line (JSON lines, text) or one file (a JSON list is parsed item
by item from the file's text). A bad record is passed to `on_error` (see `records.BadRecords`): the
default raises; a callback that returns makes the reader go on with the next record.
"""
import glob
import gzip
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from general_util.paths import resolve_path
from data.records import DataError, Record
from general_util.errors import ConfigError

SUFFIXES = (".jsonl", ".json", ".txt")
DATA_SUFFIXES = SUFFIXES + tuple(s + ".gz" for s in SUFFIXES)
WIKIEXTRACTOR_NAME = re.compile(r"wiki_\d+")  # wikiextractor --json writes AA/wiki_00, AA/wiki_01, ... (JSON lines)
OnError = Callable[[DataError], None]


def raise_error(error: DataError) -> None:
    raise error


def expand_files(spec: str | list[str], suffixes: tuple[str, ...] = ()) -> list[Path]:
    """A file, a directory (its files with one of `suffixes`, recursively), a glob, or a list of any of
    these → a sorted, de-duplicated list of files. A spec matching nothing is an error."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in specs:
        path = resolve_path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and (
                not suffixes or p.name.endswith(suffixes) or WIKIEXTRACTOR_NAME.fullmatch(p.name)))
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not found:
            raise DataError(str(item), None, "no such file, or no files match")
        files.extend(found)
    return list(dict.fromkeys(files))


def expand_source(spec: str | list[str], suffixes: tuple[str, ...], exclude: list[str] = (),
                  wudao_listed: set[Path] | None = None) -> tuple[list[Path], int]:
    """`expand_files`, leaving out every file whose path below the spec's folder (the part of a glob before
    its first wildcard) contains one of the `exclude` substrings, as the original recipes left out paths
    containing `valid` or `test`. With `wudao_listed` (resolved paths), a file whose path below the folder
    contains `WuDaoCorpus` is left out too unless listed there (and unless a `coig_data.json`, which the
    original's TextDatasetUnify read first), as that reader did with its `wudao_sample_list`. Returns the files
    kept and how many were left out."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    kept, left_out = [], 0
    for item in specs:
        files = expand_files(item, suffixes)
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


def read_records(path: Path, on_error: OnError = raise_error, text_documents: str = "auto",
                 progress: Callable[[int], None] | None = None) -> Iterator[Record]:
    """The records of one data file, whatever its format. An unreadable file (corrupt gzip) or one
    without any record is reported as a bad record of the file. `progress` is called with the number of
    bytes of the file (as stored, compressed or not) read since its last call."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    readers = {".jsonl": read_jsonl, ".json": read_json, "": read_json,
               ".txt": lambda path, on_error, progress: read_text(path, on_error, text_documents, progress)}
    suffix = Path(name).suffix if not WIKIEXTRACTOR_NAME.fullmatch(name) else ""
    if suffix not in readers:
        raise DataError(str(path), None, f"unsupported file type {suffix!r}; use one of {', '.join(DATA_SUFFIXES)}")
    seen = 0  # records, good or bad

    def counted(error: DataError) -> None:
        nonlocal seen
        seen += 1
        on_error(error)

    try:
        for record in readers[suffix](path, counted, progress):
            seen += 1
            yield record
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        on_error(DataError(str(path), None, f"unreadable file ({e})", kind="unreadable file"))
        return
    if seen == 0:
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

    def close(self) -> None:
        self.file.close()
        super().close()


def open_binary(path: Path, progress: Callable[[int], None] | None = None):
    raw = io.BufferedReader(CountingFile(path, progress)) if progress else open(path, "rb")
    return gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw


@contextmanager
def opened(path: Path, progress: Callable[[int], None] | None = None):
    """open_binary as a context manager that also closes the file under a gzip wrapper."""
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


def read_jsonl(path: Path, on_error: OnError = raise_error, progress=None) -> Iterator[Record]:
    with opened(path, progress) as f:
        for line_no, raw in enumerate(f, start=1):
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


def read_json(path: Path, on_error: OnError = raise_error, progress=None) -> Iterator[Record]:
    """A JSON list, item by item, each with the line it starts on; or a file holding one JSON object (one
    record); or JSON lines (BELLE ships JSON lines named .json): a file whose first line is a JSON value
    of its own. Undecodable bytes spoil only the item that holds them; malformed JSON ends the file (the
    rest cannot be re-synchronised), reported as one bad record."""
    with opened(path, progress) as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="surrogateescape")
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        if _is_json_lines(text[start:]):
            yield from read_jsonl(path, on_error)
        else:
            yield from _single_object(path, text, on_error)
        return
    decoder, whitespace = json.JSONDecoder(), re.compile(r"\s*")
    line_no, counted_to = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line_no, counted_to
        line_no += text.count("\n", counted_to, pos)
        counted_to = pos
        return line_no

    pos = whitespace.match(text, start + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        item_line = line_at(pos)
        try:
            data, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            on_error(DataError(str(path), e.lineno, f"malformed JSON ({e.msg}); the rest of the file is not read",
                               kind="malformed JSON"))
            return
        try:
            if _has_surrogates(data):
                raise DataError(str(path), item_line, "not valid UTF-8", kind="not valid UTF-8")
            _check_value(data, path, item_line)
        except DataError as error:
            on_error(error)
        else:
            yield Record(data, str(path), item_line)
        pos = whitespace.match(text, end).end()
        if text.startswith(",", pos):
            pos = whitespace.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            return
        else:
            on_error(DataError(str(path), line_at(pos), "malformed JSON (expected ',' or ']' after an item); "
                               "the rest of the file is not read", kind="malformed JSON"))
            return


def _is_json_lines(text: str) -> bool:
    """Whether a text that is not a JSON list is JSON lines: its first line holds a whole JSON value and
    more text follows (a pretty-printed object's first line, `{`, is no JSON value of its own)."""
    first, _, rest = text.partition("\n")
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return bool(rest.strip())


def _single_object(path: Path, text: str, on_error: OnError) -> Iterator[Record]:
    """A file holding one JSON value: one record, on the line where it starts."""
    line = text.count("\n", 0, len(text) - len(text.lstrip())) + 1
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        on_error(DataError(str(path), e.lineno, f"malformed JSON ({e.msg})", kind="malformed JSON"))
        return
    try:
        if _has_surrogates(data):
            raise DataError(str(path), line, "not valid UTF-8", kind="not valid UTF-8")
        _check_value(data, path, line)
    except DataError as error:
        on_error(error)
        return
    yield Record(data, str(path), line)


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
