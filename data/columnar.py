"""Columnar corpora → records: Parquet (the hub's format: every dataset is served as
`data/<split>-0000N-of-0000M.parquet`) and Arrow (`datasets`' `save_to_disk` folders and the `.arrow` files of
its cache, written as Arrow IPC streams). Each row is one record, its columns the record's fields, so the
per-record layout detection of data/formats.py applies unchanged; a record's "line" is its 1-based row in
the file. Read a record batch at a time (pyarrow), so memory is bounded by a batch, not by the file.

A hub dataset repository cloned with `git clone` (and `git lfs pull`) is a folder whose `data/` holds the
split's shards; `split_of` reads the split from the shard's name, so a source picks one split of it.
"""
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from data.records import DataError, Record

BATCH_ROWS = 1024  # rows decoded at a time
# the hub's shard names: train-00000-of-00004.parquet (older conversions add -<hash> before the suffix)
HUB_SHARD = re.compile(r"(?P<split>[\w.]+?)-\d{5}-of-\d{5}(?:-[0-9a-f]+)?\.parquet")
LFS_POINTER = b"version https://git-lfs"


def split_of(path: Path) -> str | None:
    """The split a hub-named shard belongs to (`train-00000-of-00002.parquet` → train), else None."""
    match = HUB_SHARD.fullmatch(path.name)
    return match["split"] if match else None


def save_to_disk_files(folder: Path, split: str) -> list[Path] | None:
    """The `.arrow` files of a `datasets` `save_to_disk` folder in its own order (state.json lists them), or of
    the `split` of a saved DatasetDict (dataset_dict.json lists the splits); None for another folder."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        if split not in splits:
            raise DataError(str(folder), None, f"no split {split!r} in this save_to_disk folder (it has {splits})")
        folder = folder / split
    state = folder / "state.json"
    if not state.is_file():
        return None
    return [folder / item["filename"] for item in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]


def _check_not_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(len(LFS_POINTER)) == LFS_POINTER:
            raise DataError(str(path), None, "a Git LFS pointer, not the data: run `git lfs pull` in the clone",
                            kind="unreadable file")


def parquet_row_groups(path: Path) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes) of each row group of a Parquet file, from its footer."""
    import pyarrow.parquet as pq
    _check_not_lfs_pointer(path)
    meta = pq.ParquetFile(path).metadata
    return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


def _rows(batches, path: Path, first_row: int, progress: Callable[[int], None] | None) -> Iterator[Record]:
    row = first_row
    for batch in batches:
        if progress:
            progress(batch.nbytes)
        for data in batch.to_pylist():
            row += 1
            yield Record(data, str(path), row)


def read_parquet(path: Path, row_groups: range | None = None,
                 progress: Callable[[int], None] | None = None) -> Iterator[Record]:
    """The rows of a Parquet file (or of `row_groups` of it), a record batch at a time."""
    import pyarrow.parquet as pq
    _check_not_lfs_pointer(path)
    parquet = pq.ParquetFile(path)
    groups = range(parquet.metadata.num_row_groups) if row_groups is None else row_groups
    first = sum(parquet.metadata.row_group(i).num_rows for i in range(groups.start)) if len(groups) else 0
    yield from _rows(parquet.iter_batches(BATCH_ROWS, row_groups=list(groups)), path, first, progress)


def read_arrow(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[Record]:
    """The rows of an Arrow IPC file: the stream format `datasets` writes, or the random-access file format.
    Memory-mapped; a large record batch is sliced so that it is not turned into Python objects whole."""
    import pyarrow as pa
    _check_not_lfs_pointer(path)
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        sliced = (batch.slice(i, BATCH_ROWS) for batch in batches for i in range(0, batch.num_rows, BATCH_ROWS))
        yield from _rows(sliced, path, 0, progress)
