"""One rank of tests/test_data_cache.py's shared cache build: `python -m tests.cache_build_rank <files> <cache_dir>`
as rank RANK of WORLD_SIZE (torchrun's variables) builds or reads the token cache with 2 tokenizing workers and
prints, as JSON, {"built", "dir", "rows"}, or {"error"} and exits 3 on a DataError."""
import json
import sys

import torch.distributed as dist

from data.datasets import TokenizedDataset
from data.records import DataError
from models.loading import load_tokenizer


def main(files: str, cache_dir: str) -> None:
    dist.init_process_group("gloo")
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>")
    try:
        data = TokenizedDataset({"main": {"files": files}}, tokenizer, max_seq_length=128, cache_dir=cache_dir,
                                num_proc=2)
    except DataError as error:
        print(json.dumps({"error": str(error)}))
        sys.exit(3)
    print(json.dumps({"built": data.caches[0].built, "dir": str(data.caches[0].directory),
                      "rows": [data[i] for i in range(len(data))]}))
    dist.barrier()  # end the group before exit, so no gloo thread outlives the process
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
