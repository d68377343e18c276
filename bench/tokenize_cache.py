"""Token cache: build throughput (tokens/s, 1 vs N tokenizer processes) and the time to open an existing
cache, on generated Chinese/English JSON-lines corpora of two sizes.

Opening should take well under a second whatever the corpus size: it reads meta.json and memory-maps
shards on first use. The corpus is random text (CJK characters and pseudo-words), so the tokenizer's
word cache does not flatter the throughput.

    python -m bench.tokenize_cache            # 4 MB and 16 MB corpora (a few minutes on 2 cores)
    python -m bench.tokenize_cache --quick    # 0.25 MB and 1 MB: checks the measuring code (CI)
"""
import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path


from bench.delta_memory import cpu_model

CJK = [chr(0x4E00 + i) for i in range(0, 20000, 7)]  # about 2,900 distinct characters
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "an", "el", "is", "or", "un", "th", "st", "qu"]


def generate_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """JSON lines `{"text": ...}`, half Chinese, half English-like documents of log-normal length."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(3000)]
    target, written, documents = int(megabytes * 2**20), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            length = int(min(20000, rng.lognormvariate(7.0, 0.8)))  # characters; median ≈ 1,100
            if documents % 2:
                text = "".join(rng.choice(CJK) if i % 17 else "，" for i in range(length)) + "。"
            else:
                text = " ".join(rng.choices(words, k=length // 6)) + "."
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            documents += 1
    return documents


def open_dataset(corpus: Path, cache_dir: Path, tokenizer, num_proc: int):
    from data.datasets import TokenizedDataset
    return TokenizedDataset({"corpus": {"files": str(corpus)}}, tokenizer, max_seq_length=2048, template="none",
                            packing=True, cache_dir=str(cache_dir), num_proc=num_proc)


def measure(corpus: Path, workdir: Path, tokenizer, num_proc: int) -> dict:
    cache_dir = workdir / f"cache-{corpus.stem}-{num_proc}"
    started = time.perf_counter()
    dataset = open_dataset(corpus, cache_dir, tokenizer, num_proc)
    build_seconds = time.perf_counter() - started
    stats = dataset.report["sources"]["corpus"]
    opens = []
    for _ in range(5):
        started = time.perf_counter()
        reopened = open_dataset(corpus, cache_dir, tokenizer, num_proc)
        reopened[len(reopened) // 2]  # the first row read maps its shard
        opens.append(time.perf_counter() - started)
    assert not reopened.caches[0].built
    return {"megabytes": round(corpus.stat().st_size / 2**20, 2), "documents": stats["records"], "num_proc": num_proc,
            "tokens": stats["tokens"], "rows": len(dataset), "build_seconds": round(build_seconds, 3),
            "tokens_per_second": round(stats["tokens"] / build_seconds), "open_seconds": round(statistics.median(opens), 4)}


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small corpora: checks the code, not the speed")
    parser.add_argument("--num-proc", type=int, default=2, help="tokenizer processes of the parallel builds")
    parser.add_argument("--tokenizer", default="models/tiny_llama", help="a local tokenizer folder")
    args = parser.parse_args()
    from models.loading import load_tokenizer
    tokenizer = load_tokenizer(args.tokenizer, pad_token="<unk>")
    sizes = (0.25, 1.0) if args.quick else (4.0, 16.0)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for megabytes in sizes:
            corpus = workdir / f"corpus-{megabytes:g}mb.jsonl"
            generate_corpus(corpus, megabytes)
            for num_proc in sorted({1, args.num_proc}):
                runs.append(measure(corpus, workdir, tokenizer, num_proc))
    print(json.dumps({"machine": machine(), "tokenizer": args.tokenizer, "runs": runs}, indent=2))
    print("\n| corpus | documents | tokens | processes | build s | tokens/s | open s |\n|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['megabytes']} MB | {r['documents']:,} | {r['tokens']:,} | {r['num_proc']} | {r['build_seconds']:.2f} "
              f"| {r['tokens_per_second']:,} | {r['open_seconds']:.4f} |")


if __name__ == "__main__":
    main()
