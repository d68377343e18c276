"""The token cache at corpus scale: every rank of every node builds a share of the pieces and the result is the
1-process build byte for byte; a build killed mid-way resumes without rebuilding a finished piece and never
uses a half-written one; a build's peak memory does not grow with the file (a JSON-lines `.json` of 200 MB)."""
import json
import os
from pathlib import Path

import pytest

from data.datasets import TokenizedDataset
from devtools import forked
from models.loading import load_tokenizer
from tests.forked_ranks import REPO, run_script, use_warm_fork_server

CORPORA = REPO / "tests" / "fixtures" / "data" / "corpora"
FILES = [REPO / "data/samples/alpaca_zh_en_dev.jsonl", REPO / "data/samples/coig_sample.json",
         REPO / "data/samples/wudao_sample.json", CORPORA / "example_train_0.jsonl.zst",
         CORPORA / "hub_dataset_repo/data/train-00000-of-00001.parquet"]
PIECE_BYTES = 400  # the JSON-lines sample in 6 byte ranges, the 4 other files whole (each over 400 bytes): 10 pieces


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def one_process_build(tokenizer, cache_dir: Path) -> TokenizedDataset:
    """What tests/cache_build_rank.py builds, in this process (a world of one)."""
    return TokenizedDataset({"main": {"files": [str(f) for f in FILES]}}, tokenizer, max_seq_length=128,
                            cache_dir=str(cache_dir), num_proc=1, piece_bytes=PIECE_BYTES)


def cache_files(directory: Path) -> dict[str, bytes]:
    """The cache's shard files and its meta.json less the build's duration."""
    files = {p.name: p.read_bytes() for p in sorted(directory.glob("*.npy"))}
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    del meta["stats"]["seconds"]
    return {**files, "meta": json.dumps(meta, sort_keys=True).encode()}


def test_two_nodes_build_the_same_cache_as_one_process(tmp_path, tokenizer):
    use_warm_fork_server()
    world = forked.run_forked("tests.cache_build_rank", [",".join(map(str, FILES)), str(tmp_path / "shared"),
                                                         str(PIECE_BYTES), "1"],
                              2, dict(os.environ), REPO, timeout=300, nnodes=2)
    assert [rank.returncode for rank in world.ranks] == [0, 0], [rank.stderr[-2000:] for rank in world.ranks]
    results = [json.loads(rank.stdout.strip().splitlines()[-1]) for rank in world.ranks]
    [shared] = [Path(result["dir"]) for result in results[:1]]
    assert results[0]["dir"] == results[1]["dir"] and results[0]["rows"] == results[1]["rows"]
    markers = [json.loads(p.read_text()) for p in sorted(shared.glob("piece-*.json"))]
    assert len(markers) == 10 and {m["rank"] for m in markers} == {0, 1}  # both nodes built pieces
    assert [m["rank"] for m in markers] == [i % 2 for i in range(10)]

    single = one_process_build(tokenizer, tmp_path / "single")
    assert single.caches[0].directory.name == shared.name  # the same cache key
    assert cache_files(single.caches[0].directory) == cache_files(shared)  # byte for byte
    assert [single[i] for i in range(len(single))] == results[0]["rows"]
    lines = [single.locations(i)[0] for i in range(24)]  # byte ranges 2..6 of the file: lines counted from its start
    assert lines == [f"{FILES[0]}:{n}" for n in range(1, 25)]


def test_a_build_killed_mid_way_resumes_from_its_finished_pieces(tmp_path, tokenizer):
    cache = tmp_path / "cache"
    env = {**os.environ, "LLAMA_TRAINER_FAULT": "kill@piece=3"}
    env.pop("WORLD_SIZE", None)
    killed = run_script("-m tests.cache_build_rank", [",".join(map(str, FILES)), str(cache), str(PIECE_BYTES), "1"],
                        env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    [building] = cache.iterdir()
    assert building.name.startswith(".build-")
    assert sorted(p.name for p in building.glob("piece-*.json")) == [f"piece-0000{i}.json" for i in range(3)]
    assert (building / "piece-00003-00000.tokens.npy").is_file()  # written, but its piece has no marker
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in building.iterdir()
                if p.name.startswith(("piece-00000", "piece-00001", "piece-00002"))}
    half = (building / "piece-00003-00000.tokens.npy").stat().st_ino

    resumed = one_process_build(tokenizer, cache)
    directory = resumed.caches[0].directory
    assert directory.name == building.name.removeprefix(".build-") and not building.exists()
    assert {name: (directory / name).stat().st_ino for name in finished} == {n: v[0] for n, v in finished.items()}
    assert {name: (directory / name).stat().st_mtime_ns for name in finished} == {n: v[1] for n, v in finished.items()}
    assert (directory / "piece-00003-00000.tokens.npy").stat().st_ino != half  # rebuilt, not trusted
    fresh = one_process_build(tokenizer, tmp_path / "fresh")
    assert cache_files(directory) == cache_files(fresh.caches[0].directory)


def test_peak_memory_of_a_build_does_not_grow_with_the_file(tmp_path):
    """200 MB of JSON lines in one `.json` (BELLE's naming), records of 200 kB with a short text: cheap to
    tokenize, so the test measures what reading and building hold, not the tokenizer's speed."""
    path, pad = tmp_path / "big.json", "x" * 200_000
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1000):
            f.write(json.dumps({"text": f"文档 {i} 的正文。", "pad": pad}, ensure_ascii=False) + "\n")
    size_mib = path.stat().st_size / 2**20
    result = run_script("-m tests.rss_build", [str(path), str(tmp_path / "cache")], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["records"] == measured["rows"] == 1000
    grown_mib = (measured["peak_kib"] - measured["before_kib"]) / 1024
    assert size_mib > 190 and grown_mib < 64, (size_mib, grown_mib)  # the file read whole would add ≥ 200 MiB
