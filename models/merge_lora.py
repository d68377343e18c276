"""Merge a LoRA adapter into its base model and write a plain Hugging Face folder (safetensors + tokenizer).

    python -m models.merge_lora <base model folder> <adapter folder (a LoRA checkpoint)> <output folder>
"""
import argparse
from pathlib import Path

import torch

from models.lora import adapter_tokenizer, load_adapter_model
from models.weights_io import DTYPES


def merge(base: str, adapter: str, out: str, dtype: torch.dtype = torch.float32) -> Path:
    tokenizer = adapter_tokenizer(Path(adapter), base)
    merged = load_adapter_model(Path(adapter), dtype, tokenizer, base=base).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("adapter")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of the merged weights")
    args = parser.parse_args()
    print(f"merged model written to {merge(args.base, args.adapter, args.out, DTYPES[args.dtype])}")


if __name__ == "__main__":
    main()
