"""Weight deltas between two checkpoints of one model: make (target − base) and apply (base + delta).

Both directions stream: tensors are processed in blocks of rows (`CHUNK_ELEMENTS` at a time) and
written straight into safetensors shards, so memory stays near one block (`.bin` inputs: plus 1/16 of
a shard, see models/weights_io.py) whatever the model size.

Precision. Each block is converted to float64, subtracted (make) or added (apply), and rounded once
to the output dtype: the delta's dtype (default: each tensor's own dtype; `--delta-dtype` overrides,
`fp64` included) or the target's recorded dtype. Writing ulp_X(v) for the spacing of dtype X at |v|, T
for the target, B for the base, D for the stored delta, T' for apply(make(T)):
- always |T' − T| ≤ ulp_D(T − B): two roundings of at most half a delta ulp each;
- delta wider than the model (fp32 delta of bf16/fp16, fp64 delta of fp32/bf16/fp16): T − B is exact in
  the delta's dtype whenever the exponents of T and B differ by at most 14 (bf16), 11 (fp16) or 28 (fp32
  in fp64), so then B + D = T exactly and T' == T bit for bit; that covers every weight of a fine-tuned
  model except ones that nearly vanished (|T| ≪ |B|) and signed zeros (T = −0.0 comes back +0.0);
- delta in the model's dtype: |T' − T| ≤ ulp_T(T) wherever |T − B| ≤ |T|, but not bit for bit: an fp32
  model with an fp32 delta loses the low bits of about a third of its changed weights.
make_delta does not rely on these bounds: it checks every weight by apply's own arithmetic as it writes,
records the count in `delta_meta.json` (`inexact_weights`) and, when it is not 0, says so in one line
(and apply_delta repeats it).

Vocabulary growth. `embed_tokens` / `lm_head` may have more rows in the target (an added [PAD], a
Chinese-extended vocabulary): rows the base has are stored as deltas, the extra rows as-is. Any other
difference in names or shapes stops before anything is written.

Wrong-base detection. `delta_meta.json` records, per tensor, the shapes, the target dtype and a
fingerprint of the base tensor: sha256 of its dtype, shape and bytes, all of them for tensors up to
`FULL_HASH_BYTES` and otherwise `SAMPLE_ROWS` evenly spaced rows. A different model or release differs
in every sampled row, and the sample costs about 60 MB of reads for a 13B model (hashing everything would
read the whole base once more before anything is written).

Legacy deltas. Published deltas have no `delta_meta.json`; `apply_delta(..., legacy=...)` names how
they were made (`LEGACY_FLAVOURS`):
- `panda`: PandaLLM's original make_delta: every tensor is target − base except `embed_tokens` /
  `lm_head`, which hold the target's values (copied as they are, so the base may have fewer rows);
- `fastchat`: FastChat v1.1 on: every tensor is target − base, embeddings included. Its deltas have
  the base's vocabulary (32000 rows) and its apply_delta (`param.data += delta`) fails on any other;
  only its v0 scripts, whose [PAD] row made the vocabulary 32001, padded the base with zero rows (in
  make and apply), so that extra rows are the delta's own values. A delta with more rows than the base
  is therefore refused as a likely wrong base, unless `verify=False` (`--no-verify`) takes the extra
  rows as the delta's own values, as v0 did.
Either way each tensor is written in the delta's dtype, by the same float64 arithmetic: the exact sum
rounded once, which for a base and delta of one dtype is bit for bit the in-place add of those scripts.
Without a fingerprint a wrong base is caught only by tensor names, shapes (beyond the vocabulary rows),
vocabulary size and dtype. Rotary `inv_freq` buffers (saved by transformers < 4.31, recomputed on load)
that only one side has are left out.
"""
import hashlib
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from models.weights_io import (DEFAULT_MAX_SHARD_SIZE, DTYPES, ShardedWriter, TensorSpec, WeightsError, WeightsReader,
                               check_output_folder, copy_side_files, dtype_name, format_size, parse_size,
                               staged_folder, tensor_bytes)

META_FILE = "delta_meta.json"
META_FORMAT = "llama-delta/1"
VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight")
DELTA_DTYPES = {**DTYPES, "fp64": torch.float64}  # fp64: exact for fp32 weights (see the module docstring)
CHUNK_ELEMENTS = 2**21  # rows per block ≈ this many elements: 16 MB as float64
FULL_HASH_BYTES = 2**20
SAMPLE_ROWS = 16
LEGACY_FLAVOURS = {"panda": "target − base except embed_tokens / lm_head, which are the target's own",
                   "fastchat": "target − base for every tensor, embeddings included (FastChat v1.1 on)"}
RECOMPUTED_BUFFERS = ("rotary_emb.inv_freq",)
NO_FINGERPRINT = ("no base fingerprint in a legacy delta: the base cannot be verified beyond names, shapes and "
                  "vocabulary size")


def base_fingerprint(reader: WeightsReader, name: str) -> str:
    """sha256 of dtype, shape and bytes: all of them, or `SAMPLE_ROWS` evenly spaced rows of a large tensor."""
    spec = reader.specs[name]
    digest = hashlib.sha256(f"{dtype_name(spec.dtype)}{list(spec.shape)}".encode())
    if spec.nbytes <= FULL_HASH_BYTES or not spec.shape:
        digest.update(tensor_bytes(reader.read(name)))
    else:
        rows = spec.shape[0]
        for row in sorted({round(i * (rows - 1) / (SAMPLE_ROWS - 1)) for i in range(SAMPLE_ROWS)}):
            digest.update(tensor_bytes(reader.read(name, row, row + 1)))
    return digest.hexdigest()[:32]


def shared_rows(name: str, base: TensorSpec, target: TensorSpec) -> int:
    """How many leading rows of `name` the base has: all of them, or fewer for a grown vocabulary."""
    if base.shape == target.shape:
        return base.shape[0] if base.shape else 0
    grown = (name.endswith(VOCAB_TENSORS) and len(base.shape) == len(target.shape) == 2
             and base.shape[1] == target.shape[1] and base.shape[0] < target.shape[0])
    if not grown:
        raise WeightsError(f"tensor '{name}': base shape {list(base.shape)} vs target shape {list(target.shape)}; "
                           f"only {' / '.join(VOCAB_TENSORS)} may differ, by extra rows")
    return base.shape[0]


def check_same_names(first: dict, first_label: str, second: dict, second_label: str) -> None:
    only_first, only_second = sorted(first.keys() - second.keys()), sorted(second.keys() - first.keys())
    if only_first:
        raise WeightsError(f"tensor '{only_first[0]}' is in the {first_label} but not in the {second_label}")
    if only_second:
        raise WeightsError(f"tensor '{only_second[0]}' is in the {second_label} but not in the {first_label}")


def check_floating(reader: WeightsReader) -> None:
    for name, spec in reader.specs.items():
        if not spec.dtype.is_floating_point:
            raise WeightsError(f"tensor '{name}' in {reader.folder} has dtype {dtype_name(spec.dtype)}; "
                               f"only floating-point weights can be diffed")


def paired_blocks(x: WeightsReader, base: WeightsReader, name: str, base_rows: int
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(block of `x`, the base's same rows or None past `base_rows`), in blocks of rows as read."""
    shape = x.specs[name].shape
    if not shape:
        yield x.read(name), base.read(name)
        return
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    bounds = sorted({*range(0, base_rows, step), *range(base_rows, shape[0], step), shape[0]})
    for start, stop in itertools.pairwise(bounds):
        yield x.read(name, start, stop), base.read(name, start, stop) if start < base_rows else None


def combined(block: torch.Tensor, base_block: torch.Tensor | None, sign: int, dtype: torch.dtype) -> torch.Tensor:
    """`block + sign·base_block` (or `block` alone), computed in float64 and rounded once to `dtype`."""
    result = block.double()
    if base_block is not None:
        result.add_(base_block.double(), alpha=sign)
    return result.to(dtype)


def combined_blocks(x: WeightsReader, base: WeightsReader, name: str, base_rows: int, sign: int,
                    dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """`x + sign·base` over the rows the base has and `x` alone over the rest, in blocks of rows, each
    computed in float64 and rounded once to `dtype`."""
    for block, base_block in paired_blocks(x, base, name, base_rows):
        yield combined(block, base_block, sign, dtype)


def differing_bits(first: torch.Tensor, second: torch.Tensor) -> int:
    """How many elements of two tensors of one dtype differ in their bits (-0.0 vs 0.0, NaN payloads included)."""
    as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[first.element_size()]
    return int((first.reshape(-1).view(as_int) != second.reshape(-1).view(as_int)).sum())


def checked_delta_blocks(target: WeightsReader, base: WeightsReader, name: str, base_rows: int, dtype: torch.dtype,
                         inexact: dict[str, int]) -> Iterator[torch.Tensor]:
    """The delta's blocks (what `combined_blocks` gives with sign −1), each checked on the spot by apply_delta's
    arithmetic (delta + base in float64, rounded once): `inexact[name]`
    counts the weights that would not come back bit for bit. The two float64 buffers serve both directions,
    so the check costs no more memory than the subtraction."""
    for block, base_block in paired_blocks(target, base, name, base_rows):
        if base_block is None:
            delta = block.to(dtype)
            inexact[name] += differing_bits(delta.to(block.dtype), block)
        else:
            work, base64 = block.to(torch.float64, copy=True), base_block.to(torch.float64)
            delta = work.sub_(base64).to(dtype, copy=True)
            inexact[name] += differing_bits(work.copy_(delta).add_(base64).to(block.dtype), block)
            del work, base64  # not held while the writer takes the block
        del block, base_block
        yield delta


def make_delta(base_path, target_path, delta_path, delta_dtype: str | None = None,
               max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False) -> Path:
    """Write target − base (plus the target's config and tokenizer) to `delta_path`. Every weight is checked
    to come back bit for bit through apply_delta; where some do not, one line says how many (and
    `delta_meta.json` records it)."""
    started = time.perf_counter()
    base_path, target_path, delta_path = Path(base_path), Path(target_path), Path(delta_path)
    max_shard_bytes = parse_size(max_shard_size)
    if delta_dtype is not None and delta_dtype not in DELTA_DTYPES:
        raise WeightsError(f"delta dtype {delta_dtype!r}: use one of {', '.join(DELTA_DTYPES)}")
    base, target = WeightsReader(base_path), WeightsReader(target_path)
    check_same_names(base.specs, "base", target.specs, "target")
    check_floating(base)
    check_floating(target)
    rows = {name: shared_rows(name, base.specs[name], spec) for name, spec in target.specs.items()}
    check_output_folder(delta_path, overwrite, [base_path, target_path])

    tensors = {name: {"base_shape": list(base.specs[name].shape), "target_shape": list(spec.shape),
                      "target_dtype": dtype_name(spec.dtype), "base_fingerprint": base_fingerprint(base, name)}
               for name, spec in tqdm(target.specs.items(), desc="fingerprint base", unit="tensor")}
    specs = {name: TensorSpec(spec.shape, DELTA_DTYPES[delta_dtype] if delta_dtype else spec.dtype)
             for name, spec in target.specs.items()}
    inexact = dict.fromkeys(specs, 0)
    with staged_folder(delta_path) as staging:
        writer = ShardedWriter(staging, specs, max_shard_bytes)
        for name, spec in tqdm(specs.items(), desc="make delta", unit="tensor"):
            writer.add(name, checked_delta_blocks(target, base, name, rows[name], spec.dtype, inexact))
        shards = writer.close()
        meta = {"format": META_FORMAT, "arithmetic": "float64, rounded once to the output dtype",
                "fingerprint": f"sha256 of dtype, shape and bytes (all if <= {FULL_HASH_BYTES} bytes, "
                               f"else {SAMPLE_ROWS} evenly spaced rows)",
                "inexact_weights": sum(inexact.values()),  # weights apply_delta does not restore bit for bit
                "tensors": tensors}
        (staging / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        copy_side_files(target_path, staging)
    print_summary("delta", delta_path, specs, len(shards), started, base=base, target=target)
    if meta["inexact_weights"]:
        print(inexact_note(meta["inexact_weights"], sum(math.prod(s.shape) for s in specs.values()),
                           next(name for name, count in inexact.items() if count), delta_dtype), file=sys.stderr)
    return delta_path


def inexact_note(count: int, total: int, first: str, delta_dtype: str | None) -> str:
    """The one line saying that a delta does not round-trip bit for bit, and what would."""
    fix = ("no floating-point delta can (a weight that nearly vanished, or a -0.0)" if delta_dtype == "fp64"
           else "--delta-dtype fp64 stores the difference of fp32, bf16 or fp16 weights exactly")
    return (f"note: {count} of {total} weights do not round-trip bit for bit through this delta (within one ulp "
            f"of the delta; first in '{first}'): {fix}")


def read_meta(delta_path: Path, legacy: str | None = None) -> dict | None:
    """The delta's `delta_meta.json`; None for a legacy delta, which must not have one."""
    path = delta_path / META_FILE
    if not delta_path.is_dir():
        raise WeightsError(f"{delta_path}: no such folder")
    if legacy is not None:
        if legacy not in LEGACY_FLAVOURS:
            raise WeightsError(f"legacy delta flavour {legacy!r}: use one of {', '.join(LEGACY_FLAVOURS)}")
        if path.is_file():
            raise WeightsError(f"{delta_path} has a {META_FILE}, so it was written by make_delta.py; "
                               f"apply it without --legacy-delta")
        return None
    if not path.is_file():
        raise WeightsError(f"{delta_path} has no metadata ({META_FILE}): not a delta written by make_delta.py; "
                           f"for a published delta, name its flavour with --legacy-delta panda|fastchat")
    meta = json.loads(path.read_text())
    if meta.get("format") != META_FORMAT:
        raise WeightsError(f"{path}: format {meta.get('format')!r}, expected {META_FORMAT!r}")
    return meta


def meta_plan(base: WeightsReader, delta: WeightsReader, tensors: dict) -> dict[str, tuple[TensorSpec, int]]:
    """Per tensor of a make_delta.py delta: the target's spec and how many leading rows are base + delta."""
    check_same_names(base.specs, "base", tensors, "delta")
    check_same_names(tensors, META_FILE, delta.specs, "delta weights")
    for name, info in tensors.items():
        if list(base.specs[name].shape) != info["base_shape"]:
            raise WeightsError(f"tensor '{name}': base shape {list(base.specs[name].shape)}, but the delta was made "
                               f"from a base of shape {info['base_shape']}")
        if list(delta.specs[name].shape) != info["target_shape"]:
            raise WeightsError(f"tensor '{name}': delta shape {list(delta.specs[name].shape)} disagrees with its "
                               f"{META_FILE} ({info['target_shape']}); the delta folder is damaged")
    return {name: (TensorSpec(tuple(tensors[name]["target_shape"]), getattr(torch, tensors[name]["target_dtype"])),
                   tensors[name]["base_shape"][0] if tensors[name]["target_shape"] else 0) for name in delta.specs}


def legacy_plan(base: WeightsReader, delta: WeightsReader, flavour: str,
                extra_rows_as_is: bool = False) -> tuple[dict[str, tuple[TensorSpec, int]], list[str]]:
    """Per tensor of a legacy delta: the target's spec (the delta's) and how many leading rows are base + delta
    (0: copied); and the notes to print. Refuses a base that differs in names, in shapes other than grown
    vocabulary rows (FastChat: unless `extra_rows_as_is`), or in having non-floating weights."""
    notes = [f"warning: {NO_FINGERPRINT}"]
    one_sided = sorted(name for name in base.specs.keys() ^ delta.specs.keys() if name.endswith(RECOMPUTED_BUFFERS))
    if one_sided:
        notes.append(f"note: leaving out {len(one_sided)} rotary inv_freq buffer(s) that only one side has "
                     f"(first: '{one_sided[0]}'); transformers recomputes them")
    names = [name for name in delta.specs if name not in one_sided]
    check_same_names(dict.fromkeys(base.specs.keys() - one_sided), "base", dict.fromkeys(names), "delta")
    check_floating(base)
    check_floating(delta)
    plan, grown = {}, []
    for name in names:
        try:
            rows = shared_rows(name, base.specs[name], delta.specs[name])
        except WeightsError as exc:
            raise WeightsError(f"{exc}; {base.folder} is not the base this delta was made from") from None
        shape = delta.specs[name].shape
        if flavour == "panda" and name.endswith(VOCAB_TENSORS):
            rows = 0  # the target's values, copied
        elif shape and rows < shape[0]:
            if not extra_rows_as_is:
                raise WeightsError(f"tensor '{name}': delta {shape[0]} rows vs base {rows}; a FastChat v1.1+ delta has "
                                   f"its base's vocabulary (its apply_delta fails here too), so {base.folder} is "
                                   f"likely not its base; pass --no-verify to take the extra rows as the delta's own "
                                   f"values (FastChat v0's zero-padded [PAD] rows)")
            grown.append(name)
        plan[name] = (delta.specs[name], rows)
    if grown:
        extra = delta.specs[grown[0]].shape[0] - base.specs[grown[0]].shape[0]
        notes.append(f"note: {' and '.join(grown)} have {extra} row(s) more than the base; as in FastChat's v0 "
                     f"deltas (base padded with zero rows) they are taken as the delta's own values (--no-verify)")
    return plan, notes


def apply_delta(base_path, delta_path, target_path, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                overwrite: bool = False, verify: bool = True, legacy: str | None = None) -> Path:
    """Write base + delta (plus the delta's config and tokenizer) to `target_path`; with `verify`, first
    refuse a base whose fingerprints differ from the one the delta was made from. `legacy` ("panda" or
    "fastchat") applies a delta without `delta_meta.json`, made by that flavour's rule."""
    started = time.perf_counter()
    base_path, delta_path, target_path = Path(base_path), Path(delta_path), Path(target_path)
    max_shard_bytes = parse_size(max_shard_size)
    meta = read_meta(delta_path, legacy)
    base, delta = WeightsReader(base_path), WeightsReader(delta_path)
    plan, notes = (legacy_plan(base, delta, legacy, extra_rows_as_is=not verify) if legacy
                   else (meta_plan(base, delta, meta["tensors"]), []))
    check_output_folder(target_path, overwrite, [base_path, delta_path])
    if meta and meta.get("inexact_weights"):
        notes.append(f"note: {meta['inexact_weights']} weights of this delta do not come back bit for bit "
                     f"(make_delta.py said so; --delta-dtype fp64 makes fp32 weights exact)")
    for note in notes:
        print(note, file=sys.stderr)
    if verify and not legacy:
        tensors = meta["tensors"]
        differing = [name for name in tqdm(tensors, desc="verify base", unit="tensor")
                     if base_fingerprint(base, name) != tensors[name]["base_fingerprint"]]
        if differing:
            raise WeightsError(f"{base_path} is not the base this delta was made from: {len(differing)} of "
                               f"{len(tensors)} tensors differ (first: '{differing[0]}'); "
                               f"pass --no-verify to apply anyway")

    specs = {name: spec for name, (spec, _) in plan.items()}
    with staged_folder(target_path) as staging:
        writer = ShardedWriter(staging, specs, max_shard_bytes)
        for name, (spec, base_rows) in tqdm(plan.items(), desc="apply delta", unit="tensor"):
            writer.add(name, combined_blocks(delta, base, name, base_rows, +1, spec.dtype))
        shards = writer.close()
        copy_side_files(delta_path, staging)
    print_summary("target", target_path, specs, len(shards), started, base=base, delta=delta)
    return target_path


def print_summary(label: str, path: Path, specs: dict[str, TensorSpec], num_shards: int, started: float,
                  **inputs: WeightsReader) -> None:
    sources = ", ".join(f"{key} {format_size(reader.total_bytes)}" for key, reader in inputs.items())
    print(f"wrote {label} {path}: {len(specs)} tensors, {format_size(sum(s.nbytes for s in specs.values()))} "
          f"in {num_shards} shard(s) from {sources} in {time.perf_counter() - started:.1f} s")
