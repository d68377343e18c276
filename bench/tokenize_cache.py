"""Token cache: build throughput (tokens/s) of 1 vs 2 building processes (ranks, as on two GPUs or nodes) and 1 vs
N tokenizer processes per rank, of Parquet vs JSON lines, the time to open an existing cache, and the peak
memory of a build against the corpus size (the goal: flat), on generated Chinese/English corpora.

Every build runs in a fresh child process (`--child`), which reports its build time and peak RSS; two ranks
are two children joined in a gloo process group, sharing the cache folder (--fork-workers, the smoke test's
way: children forked from the warm fork server, bench/harness.py; their RSS then includes the server's imports).
Opening should take well under a second whatever the corpus size: it reads meta.json and memory-maps shards on
first use. The corpus is random
text (CJK characters and pseudo-words), so the tokenizer's word cache does not flatter the throughput.

    python -m bench.tokenize_cache                          # 4 MB and 16 MB corpora (a few minutes on 2 cores)
    python -m bench.tokenize_cache --memory-gb 0.1 1 2      # + peak RSS of a build of 0.1, 1 and 2 GB corpora
    python -m bench.tokenize_cache --memory-only --memory-gb 0.1 1 2   # the peak RSS builds alone
    python -m bench.tokenize_cache --quick                  # 0.25 MB and 1 MB: checks the measuring code (CI)
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import PeakMemory, add_fork_workers_argument, run_worker_processes

REPO = Path(__file__).resolve().parents[1]

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


def open_dataset(corpus: Path, cache_dir: Path, tokenizer, num_proc: int, piece_bytes: int = 1 << 26,
                 shard_tokens: int = 1 << 24):
    from data.datasets import TokenizedDataset
    return TokenizedDataset({"corpus": {"files": str(corpus)}}, tokenizer, max_seq_length=2048, template="none",
                            packing=True, cache_dir=str(cache_dir), num_proc=num_proc, piece_bytes=piece_bytes,
                            shard_tokens=shard_tokens)


def child(corpus: str, cache_dir: str, num_proc: str, piece_bytes: str, tokenizer_path: str, shard_tokens: str) -> None:
    """One building process (a rank of WORLD_SIZE when set): builds, prints its build seconds and peak RSS."""
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist
        dist.init_process_group("gloo")
    from models.loading import load_tokenizer
    tokenizer = load_tokenizer(tokenizer_path, pad_token="<unk>")
    # this process's VmRSS now and VmHWM after: ru_maxrss would start at the bench parent's peak (Linux keeps it across
    # fork and exec), and the parent of --memory-gb runs has built the throughput corpora first
    memory = PeakMemory(cuda=False)
    before = memory.start()
    started = time.perf_counter()
    dataset = open_dataset(Path(corpus), Path(cache_dir), tokenizer, int(num_proc), int(piece_bytes), int(shard_tokens))
    seconds = time.perf_counter() - started
    stats = dataset.report["sources"]["corpus"]
    print(json.dumps({"seconds": seconds, "tokens": stats["tokens"], "documents": stats["records"], "rows": len(dataset),
                      "rss_before_mib": before / 2**20, "peak_rss_mib": memory.peak_bytes() / 2**20}))


def build_in_children(corpus: Path, cache_dir: Path, tokenizer_path: str, num_proc: int, ranks: int,
                      piece_bytes: int, shard_tokens: int = 1 << 24, fork: bool = False) -> dict:
    """Build with `ranks` child processes (each with `num_proc` tokenizer processes), fresh or forked from the warm
    fork server (`fork`); the slowest rank's time."""
    child_args = ["--child", str(corpus), str(cache_dir), str(num_proc), str(piece_bytes), tokenizer_path, str(shard_tokens)]
    if fork:
        world = run_worker_processes("bench.tokenize_cache", child_args, ranks, dict(os.environ), fork=True)
        if world.returncode:
            raise SystemExit(f"a building process failed ({world.returncode}):\n{world.stderr[-3000:]}")
        outputs = [rank.stdout for rank in world.ranks]
    else:
        from general_util.dist import free_port
        world_env = ({"WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
                     if ranks > 1 else {})
        children = [subprocess.Popen([sys.executable, "-m", "bench.tokenize_cache", *child_args], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **world_env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                    for rank in range(ranks)]
        outputs = []
        for process in children:
            out, _ = process.communicate()
            if process.returncode:
                raise SystemExit(f"a building process failed ({process.returncode})")
            outputs.append(out)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    return {**results[0], "seconds": max(r["seconds"] for r in results),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results)}


def to_parquet(corpus: Path) -> Path:
    """The JSON-lines corpus as a Parquet file (row groups of 4,096 documents), streamed through pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = corpus.with_suffix(".parquet")
    with open(corpus, encoding="utf-8") as f, pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        batch = []
        for line in f:
            batch.append(json.loads(line)["text"])
            if len(batch) == 4096:
                writer.write_table(pa.table({"text": batch}))
                batch = []
        if batch:
            writer.write_table(pa.table({"text": batch}))
    return path


def measure(corpus: Path, workdir: Path, tokenizer, tokenizer_path: str, num_proc: int, ranks: int,
            piece_bytes: int, fork: bool = False) -> dict:
    cache_dir = workdir / f"cache-{corpus.name}-{ranks}x{num_proc}"
    built = build_in_children(corpus, cache_dir, tokenizer_path, num_proc, ranks, piece_bytes, fork=fork)
    opens = []
    for _ in range(5):
        started = time.perf_counter()
        reopened = open_dataset(corpus, cache_dir, tokenizer, num_proc, piece_bytes)
        reopened[len(reopened) // 2]  # the first row read maps its shard
        opens.append(time.perf_counter() - started)
    assert not reopened.caches[0].built
    return {"format": corpus.suffix[1:], "megabytes": round(corpus.stat().st_size / 2**20, 2),
            "documents": built["documents"], "ranks": ranks, "num_proc": num_proc, "tokens": built["tokens"],
            "rows": built["rows"], "build_seconds": round(built["seconds"], 3),
            "tokens_per_second": round(built["tokens"] / built["seconds"]), "open_seconds": round(statistics.median(opens), 4)}


def machine() -> dict:
    # here, not at the top: the tokenizer processes' fork server imports this module (as __main__), and
    # bench.delta_memory imports torch, which they do not need
    from bench.delta_memory import cpu_model
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(*argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small corpora: checks the code, not the speed")
    parser.add_argument("--num-proc", type=int, default=2, help="tokenizer processes of the parallel builds")
    parser.add_argument("--memory-gb", type=float, nargs="*", default=[],
                        help="corpus sizes (GB) whose build's peak RSS is measured (the README's figures: 0.1 1 2)")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-RSS builds of --memory-gb")
    parser.add_argument("--shard-tokens", type=int, default=1 << 24,
                        help="shard size of the peak-RSS builds (a build holds one shard: below it RSS grows with the corpus)")
    parser.add_argument("--tokenizer", default="models/tiny_llama", help="a local tokenizer folder")
    add_fork_workers_argument(parser)
    args = parser.parse_args(argv)
    from models.loading import load_tokenizer
    tokenizer = load_tokenizer(args.tokenizer, pad_token="<unk>")
    sizes = (0.25, 1.0) if args.quick else (4.0, 16.0)
    piece_bytes = 1 << 18 if args.quick else 1 << 22  # pieces enough for two ranks to share
    runs, memory = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for megabytes in () if args.memory_only else sizes:
            corpus = workdir / f"corpus-{megabytes:g}mb.jsonl"
            generate_corpus(corpus, megabytes)
            for ranks, num_proc in sorted({(1, 1), (1, args.num_proc), (2, 1)}):
                runs.append(measure(corpus, workdir, tokenizer, args.tokenizer, num_proc, ranks, piece_bytes,
                                    args.fork_workers))
            runs.append(measure(to_parquet(corpus), workdir, tokenizer, args.tokenizer, 1, 1, piece_bytes,
                                args.fork_workers))
        for gigabytes in args.memory_gb:
            corpus = workdir / f"memory-{gigabytes:g}gb.jsonl"
            generate_corpus(corpus, gigabytes * 1024)
            built = build_in_children(corpus, workdir / f"cache-memory-{gigabytes:g}", args.tokenizer, 1, 1, 1 << 26,
                                      args.shard_tokens, fork=args.fork_workers)
            memory.append({"gigabytes": gigabytes, "shard_tokens": args.shard_tokens, "tokens": built["tokens"], "build_seconds": round(built["seconds"], 1),
                           "rss_before_mib": round(built["rss_before_mib"]), "peak_rss_mib": round(built["peak_rss_mib"])})
            corpus.unlink()
    print(json.dumps({"machine": machine(), "tokenizer": args.tokenizer, "runs": runs, "memory": memory}, indent=2))
    if runs:
        print("\n| corpus | format | documents | tokens | ranks × tokenizer processes | build s | tokens/s | open s |\n"
              "|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['megabytes']} MB | {r['format']} | {r['documents']:,} | {r['tokens']:,} | {r['ranks']} × {r['num_proc']} "
              f"| {r['build_seconds']:.2f} | {r['tokens_per_second']:,} | {r['open_seconds']:.4f} |")
    if memory:
        print("\n| corpus | tokens | build s | RSS before the build | peak RSS |\n|---|---|---|---|---|")
        for m in memory:
            print(f"| {m['gigabytes']:g} GB | {m['tokens']:,} | {m['build_seconds']} | {m['rss_before_mib']} MiB "
                  f"| {m['peak_rss_mib']} MiB |")


if __name__ == "__main__":
    main()
