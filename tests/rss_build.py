"""A cache build measured for its peak memory (tests/test_data_corpus_build.py):
`python -m tests.rss_build <file> <cache_dir>` builds the token cache of one file and prints, as JSON, the peak
resident memory before the build (imports, tokenizer) and after it (`ru_maxrss`, KiB), and the records read."""
import json
import resource
import sys

from data.datasets import TokenizedDataset
from models.loading import load_tokenizer


def main(path: str, cache_dir: str) -> None:
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = TokenizedDataset({"main": {"files": path}}, tokenizer, max_seq_length=64, cache_dir=cache_dir,
                            template="none", num_proc=1)
    print(json.dumps({"before_kib": before, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "records": data.report["records"], "rows": len(data)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
