"""File formats → records with provenance. Readers never drop data silently: a bad record raises
`DataError` naming the file and line."""
import glob
import json
from collections.abc import Iterator
from pathlib import Path

from data.paths import resolve_path
from data.records import DataError, Record


def expand_files(spec: str | list[str], suffixes: tuple[str, ...] = ()) -> list[Path]:
    """A file, a directory (its files with one of `suffixes`, recursively), a glob, or a list of any of
    these → a sorted, de-duplicated list of files. A spec matching nothing is an error."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in specs:
        path = resolve_path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and (not suffixes or p.name.endswith(suffixes)))
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not found:
            raise DataError(str(item), None, "no such file, or no files match")
        files.extend(found)
    return list(dict.fromkeys(files))


def read_jsonl(path: Path) -> Iterator[Record]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), line_no, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(str(path), line_no, f"malformed JSON ({e.msg})") from None
            if not isinstance(data, dict):
                raise DataError(str(path), line_no, f"expected a JSON object, got {type(data).__name__}")
            yield Record(data, str(path), line_no)
