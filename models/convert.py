"""Checkpoint conversions.

    python -m models.convert zero-to-hf experiments/demo_sft/checkpoint-152 exported/demo_sft [--dtype bf16]

`zero-to-hf` (alias `to-hf`): a checkpoint of this trainer, under either engine, → a Hugging Face safetensors
folder that `AutoModelForCausalLM.from_pretrained` loads. The trainer saves `<output_dir>/checkpoint-<step>/`
with config.json, generation_config.json and the tokenizer beside the engine's state: under DeepSpeed a tag
folder whose fp32 master weights DeepSpeed's `zero_to_fp32` gathers from the ZeRO partitions, under FSDP2 a
torch.distributed.checkpoint folder `dcp/` whose shards DCP reads (no process group needed). Either way one
tensor at a time is read, cast to `--dtype` (default: the config's dtype) and streamed into shards; the
config's dtype is set to the output dtype so `dtype="auto"` loads what was written.
"""
import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from general_util.imports import hidden_modules
from models.weights_io import (DEFAULT_MAX_SHARD_SIZE, DTYPES, ShardedWriter, TensorSpec, WeightsError,
                               check_output_folder, copy_side_files, dtype_name, format_size, parse_size, run_cli,
                               staged_folder)

DCP_FOLDER = "dcp"  # checkpoint-<step>/dcp: the FSDP2 engine's DCP state (`.metadata` + one `__<rank>_0.distcp` per rank)


def config_dtype(config: dict) -> torch.dtype:
    """The dtype a Hugging Face config.json declares (`dtype`, or `torch_dtype` before transformers 5)."""
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise WeightsError(f"config.json dtype {name!r} is not a floating-point torch dtype; pass --dtype")
    return dtype


def zero_state(checkpoint: Path) -> tuple[dict[str, TensorSpec], Callable[[str], torch.Tensor]]:
    """(name → shape and dtype, name → fp32 tensor) of a DeepSpeed ZeRO checkpoint's weights."""
    with hidden_modules("mlflow"):  # imported by DeepSpeed's autotuner (~2 s), never used here
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    # Lazy: each value is gathered from the ZeRO partitions by `.contiguous()`, one tensor at a time.
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name, lazy_mode=True)
    return ({name: TensorSpec(tuple(t.shape), t.dtype) for name, t in state.items()},
            lambda name: state[name].contiguous())


def dcp_state(folder: Path) -> tuple[dict[str, TensorSpec], Callable[[str], torch.Tensor]]:
    """The same for the model part of an FSDP2 engine's DCP checkpoint (training/fsdp2_engine.py)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    metadata = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    specs = {key.removeprefix("model."): TensorSpec(tuple(entry.size), entry.properties.dtype)
             for key, entry in metadata.items() if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}

    def load(name: str) -> torch.Tensor:
        tensor = torch.empty(specs[name].shape, dtype=specs[name].dtype)
        dcp.load({"model": {name: tensor}}, checkpoint_id=folder, no_dist=True)
        return tensor

    return specs, load


def zero_to_hf(checkpoint, output, dtype: str | None = None, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
               overwrite: bool = False) -> Path:
    started = time.perf_counter()
    checkpoint, output = Path(checkpoint), Path(output)
    max_shard_bytes = parse_size(max_shard_size)
    dcp_folder = checkpoint / DCP_FOLDER
    if not checkpoint.is_dir() or not (any(checkpoint.glob("*model_states.pt")) or (dcp_folder / ".metadata").is_file()):
        raise WeightsError(f"{checkpoint}: neither DeepSpeed *model_states.pt nor an FSDP2 {DCP_FOLDER}/.metadata; "
                           f"pass a checkpoint-<step> folder")
    if not (checkpoint / "config.json").is_file():
        raise WeightsError(f"{checkpoint}: no config.json to describe the model")
    config = json.loads((checkpoint / "config.json").read_text())
    if dtype is not None and dtype not in DTYPES:
        raise WeightsError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    out_dtype = DTYPES[dtype] if dtype else config_dtype(config)
    check_output_folder(output, overwrite, [checkpoint])

    saved, load = dcp_state(dcp_folder) if dcp_folder.is_dir() else zero_state(checkpoint)
    specs = {name: TensorSpec(spec.shape, out_dtype if spec.dtype.is_floating_point else spec.dtype)
             for name, spec in saved.items()}
    with staged_folder(output) as staging:
        writer = ShardedWriter(staging, specs, max_shard_bytes)
        for name, spec in tqdm(specs.items(), desc="zero-to-hf", unit="tensor"):
            writer.add(name, [load(name).to(spec.dtype)])
        shards = writer.close()
        copy_side_files(checkpoint, staging)
        config["dtype"] = dtype_name(out_dtype)
        config.pop("torch_dtype", None)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    print(f"wrote {output}: {len(specs)} tensors, {format_size(sum(s.nbytes for s in specs.values()))} "
          f"({dtype_name(out_dtype)}) in {len(shards)} shard(s) in {time.perf_counter() - started:.1f} s")
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    zero = commands.add_parser("zero-to-hf", aliases=["to-hf"],
                               help="DeepSpeed ZeRO or FSDP2 checkpoint → Hugging Face safetensors folder")
    zero.add_argument("checkpoint", help="a checkpoint-<step> folder (DeepSpeed tag folder or FSDP2 dcp/, with config.json)")
    zero.add_argument("output", help="output folder (must not exist, see --overwrite)")
    zero.add_argument("--dtype", choices=sorted(DTYPES), help="output dtype (default: config.json's)")
    zero.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="e.g. 5GB, 200MB, 1000 (bytes)")
    zero.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: zero_to_hf(args.checkpoint, args.output, dtype=args.dtype,
                                      max_shard_size=args.max_shard_size, overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
