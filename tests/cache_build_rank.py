"""One rank of a shared cache build (tests/test_data_cache.py, tests/test_data_corpus_build.py):
`python -m tests.cache_build_rank <files> <cache_dir> [<piece_bytes> [<num_proc>]]` as rank RANK of WORLD_SIZE
(torchrun's variables; without them a world of one; files comma-separated) builds or reads the token cache (2 tokenizing workers unless
num_proc says) and prints, as JSON, {"built", "dir", "rows"}, or {"error"} and exits 3 on a DataError."""
import json
import os
import sys

import torch.distributed as dist

from data.datasets import TokenizedDataset
from data.records import DataError
from models.loading import load_tokenizer


def main(files: str, cache_dir: str, piece_bytes: str = str(1 << 26), num_proc: str = "2") -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>")
    try:
        data = TokenizedDataset({"main": {"files": files.split(",")}}, tokenizer, max_seq_length=128,
                                cache_dir=cache_dir, num_proc=int(num_proc), piece_bytes=int(piece_bytes))
    except DataError as error:
        print(json.dumps({"error": str(error)}))
        sys.exit(3)
    print(json.dumps({"built": data.caches[0].built, "dir": str(data.caches[0].directory),
                      "rows": [data[i] for i in range(len(data))]}))
    if dist.is_initialized():
        dist.barrier()  # end the group before exit, so no gloo thread outlives the process
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
