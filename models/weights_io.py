"""Reading and writing Hugging Face weight folders one tensor (or one block of rows) at a time.

Reads safetensors (`model.safetensors`, or the shards of `model.safetensors.index.json`) at the offsets
of each file's header, straight into fresh tensors of just the rows asked for: no memory map, so
nothing stays resident once a block is dropped (`safe_open`'s map keeps every page read from the open
shard in RSS). Reads legacy PyTorch shards (`pytorch_model.bin`, or the shards of
`pytorch_model.bin.index.json`, as original LLaMA conversions and published deltas are) with
`torch.load(weights_only=True, mmap=True)`. A mapped shard keeps every page read resident until it is
unmapped, so it is mapped afresh whenever the bytes read from it reach `REMAP_FRACTION` of it: at most
that much plus one read stays resident, not the whole shard (a pre-1.6, non-zip `.bin` cannot be mapped:
it is loaded whole, once).
Writes safetensors shards by streaming: the shard layout is planned from the tensor shapes up front,
so each header is written first and every tensor's bytes go straight to disk as they are produced.
Outputs are built in a hidden sibling folder and renamed into place only when complete.
"""
import json
import math
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from general_util.errors import UserError

DEFAULT_MAX_SHARD_SIZE = "5GB"
REMAP_FRACTION = 1 / 16  # a memory-mapped .bin shard is mapped afresh after each such fraction of it read
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # output dtypes (CLI names)
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# (single file, index) pairs, in the order `from_pretrained` prefers them.
WEIGHT_LAYOUTS = (("model.safetensors", SAFETENSORS_INDEX), ("pytorch_model.bin", BIN_INDEX))
# Everything of a model folder besides its weights that a usable copy needs.
SIDE_FILE_PATTERNS = ("config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
                      "added_tokens.json", "vocab.*", "merges.txt", "chat_template.*")
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
SIZE_UNITS = {"": 1, "b": 1, "bytes": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class WeightsError(UserError, ValueError):
    """A weight folder that cannot be read, combined or written; the message is one line."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_size(size: int | str) -> int:
    """Bytes from `1000`, `"1000 bytes"`, `"200MB"`, `"5GB"` or `"2GiB"` (KB/MB/GB are powers of 1000, as in
    Hugging Face's `max_shard_size`)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", size.lower())
    if not match or match.group(2) not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise WeightsError(f"size {size!r}: use a number of bytes or a size like 5GB, 200MB, 2GiB")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def format_size(num_bytes: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_bytes(tensor: torch.Tensor):
    """The tensor's raw bytes (little-endian, C order) as a buffer, without a copy when it is contiguous."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder, in shard order."""
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such folder")
    for single, index in WEIGHT_LAYOUTS:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            missing = [name for name in shards if not (folder / name).is_file()]
            if missing:
                raise WeightsError(f"{folder / index} lists {missing[0]}, which does not exist")
            return [folder / name for name in shards]
    raise WeightsError(f"{folder}: no {', '.join(name for layout in WEIGHT_LAYOUTS for name in layout)}")


class SafetensorsFile:
    """A .safetensors file read by the offsets in its header."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb")
        try:
            (length,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(length))
            header.pop("__metadata__", None)
            self.specs = {name: TensorSpec(tuple(entry["shape"]), SAFETENSORS_DTYPES[entry["dtype"]])
                          for name, entry in header.items()}
            self.offsets = {name: 8 + length + entry["data_offsets"][0] for name, entry in header.items()}
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        spec = self.specs[name]
        if start is None:
            shape, offset = spec.shape, self.offsets[name]
        else:
            shape = (stop - start, *spec.shape[1:])
            offset = self.offsets[name] + start * math.prod(spec.shape[1:]) * spec.dtype.itemsize
        tensor = torch.empty(shape, dtype=spec.dtype)
        buffer = tensor_bytes(tensor)  # a view: readinto fills the tensor
        self._file.seek(offset)
        if self._file.readinto(buffer) != len(buffer):
            raise WeightsError(f"{self.path}: truncated inside tensor '{name}'")
        return tensor


class WeightsReader:
    """The tensors of a model folder by name: `specs` (shape and dtype, in shard order) from the headers, and
    `read` of a whole tensor or of a block of its rows. One shard is open at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.files = weight_files(self.folder)
        self.safetensors = self.files[0].suffix == ".safetensors"
        self._open_path, self._open = None, None
        self._read_bytes, self._remap_bytes = 0, math.inf  # read since the open shard was mapped; its limit
        self._unmappable: set[Path] = set()  # non-zip .bin shards, loaded whole
        self.specs: dict[str, TensorSpec] = {}
        self.file_of: dict[str, Path] = {}
        for path in self.files:
            shard = self._shard(path)
            specs = shard.specs if self.safetensors else {
                name: TensorSpec(tuple(tensor.shape), tensor.dtype) for name, tensor in shard.items()}
            for name, spec in specs.items():
                if name in self.specs:
                    raise WeightsError(f"{self.folder}: tensor '{name}' is stored twice "
                                       f"({self.file_of[name].name}, {path.name})")
                self.specs[name], self.file_of[name] = spec, path

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.specs.values())

    def _shard(self, path: Path, nbytes: int = 0):
        """The open shard `path`, to read `nbytes` from: a `SafetensorsFile`, or a `.bin` state dict
        memory-mapped from disk (its pages are read on first touch and released when it is unmapped)."""
        if path != self._open_path or self._read_bytes >= self._remap_bytes:
            self._open = None  # release (unmap) the previous one first
            self._open = SafetensorsFile(path) if self.safetensors else self._load_bin(path)
            mapped = not self.safetensors and path not in self._unmappable
            self._open_path, self._read_bytes = path, 0
            self._remap_bytes = REMAP_FRACTION * path.stat().st_size if mapped else math.inf
        self._read_bytes += nbytes
        return self._open

    def _load_bin(self, path: Path) -> dict[str, torch.Tensor]:
        """`torch.load(weights_only=True)` of a `.bin` shard: memory-mapped, or whole for a pre-1.6 file."""
        try:
            if path not in self._unmappable:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap can only be used" not in str(exc):
                        raise
                    self._unmappable.add(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated file, pickle with non-tensor objects
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            raise WeightsError(f"{path}: cannot load ({reason})") from None

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Tensor `name`, or its rows [start, stop)."""
        spec = self.specs[name]
        nbytes = spec.nbytes if start is None else (stop - start) * (spec.nbytes // max(1, spec.shape[0]))
        shard = self._shard(self.file_of[name], nbytes)
        if self.safetensors:
            return shard.read(name, start, stop)
        return shard[name] if start is None else shard[name][start:stop]


def plan_shards(specs: dict[str, TensorSpec], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into consecutive shards of at most `max_shard_bytes` (a larger tensor gets a
    shard of its own), as `save_pretrained` does."""
    shards, size = [[]], 0
    for name, spec in specs.items():
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += spec.nbytes
    return shards


def safetensors_header(names: list[str], specs: dict[str, TensorSpec], metadata: dict[str, str]) -> bytes:
    entries, offset = {"__metadata__": metadata}, 0
    for name in names:
        spec = specs[name]
        entries[name] = {"dtype": SAFETENSORS_NAMES[spec.dtype], "shape": list(spec.shape),
                         "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # tensor data starts 8-byte aligned
    return struct.pack("<Q", len(header)) + header


class ShardedWriter:
    """Writes the tensors of `specs`, in that order, into `model.safetensors` or `model-0000i-of-0000n.safetensors`
    shards of at most `max_shard_bytes` plus `model.safetensors.index.json`; `add` takes each tensor as an
    iterable of row blocks, so no tensor needs to be in memory whole."""

    def __init__(self, folder: Path, specs: dict[str, TensorSpec], max_shard_bytes: int):
        self.folder, self.specs = Path(folder), specs
        self.shards = plan_shards(specs, max_shard_bytes)
        count = len(self.shards)
        self.shard_names = (["model.safetensors"] if count == 1 else
                            [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)])
        self._queue = iter([(name, i) for i, names in enumerate(self.shards) for name in names])
        self._file, self._shard_index = None, -1

    def add(self, name: str, blocks: Iterable[torch.Tensor]) -> None:
        expected, shard_index = next(self._queue, (None, None))
        if name != expected:
            raise ValueError(f"tensors must be added in specs order: got '{name}', expected '{expected}'")
        if shard_index != self._shard_index:
            self._close_file()
            self._shard_index = shard_index
            self._file = open(self.folder / self.shard_names[shard_index], "wb")
            self._file.write(safetensors_header(self.shards[shard_index], self.specs, {"format": "pt"}))
        spec, written = self.specs[name], 0
        for block in blocks:
            if block.dtype != spec.dtype:
                raise ValueError(f"'{name}': block of dtype {block.dtype}, expected {spec.dtype}")
            written += block.numel() * block.element_size()
            self._file.write(tensor_bytes(block))
        if written != spec.nbytes:
            raise ValueError(f"'{name}': wrote {written} bytes, expected {spec.nbytes}")

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> list[Path]:
        """Finish the last shard and write the index; returns the shard paths."""
        if next(self._queue, None) is not None:
            raise ValueError("ShardedWriter closed before every tensor was added")
        self._close_file()
        if len(self.shard_names) > 1:
            weight_map = {name: self.shard_names[i] for i, names in enumerate(self.shards) for name in names}
            index = {"metadata": {"total_size": sum(spec.nbytes for spec in self.specs.values())},
                     "weight_map": weight_map}
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return [self.folder / name for name in self.shard_names]


def copy_side_files(source: Path, destination: Path) -> list[str]:
    """Copy config.json, generation_config.json and the tokenizer files; returns the names copied."""
    names = sorted({path.name for pattern in SIDE_FILE_PATTERNS for path in source.glob(pattern) if path.is_file()})
    for name in names:
        shutil.copy2(source / name, destination / name)
    return names


def check_output_folder(output: Path, overwrite: bool, inputs: Iterable[Path]) -> None:
    """Refuse an existing non-empty `output` (unless `overwrite`) and any `output` that is, contains or lies
    inside one of the `inputs`."""
    resolved = output.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise WeightsError(f"output folder {output} overlaps the input {source}; choose another path")
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise WeightsError(f"{output} already exists; pass --overwrite to replace it")


@contextmanager
def staged_folder(output: Path) -> Iterator[Path]:
    """A fresh hidden sibling of `output` to write into; it replaces `output` when the block completes and
    is removed if the block fails, so `output` is never left half-written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.is_dir():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()
    staging.rename(output)


def run_cli(action: Callable[[], object]) -> int:
    """Exit status of a weight tool: 0, or 2 after printing `error: <message>` (one line, no traceback)."""
    try:
        action()
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
