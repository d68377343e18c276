"""Token cache: hit, miss and rebuild on every input, parallel tokenization and sharding give the same
rows, two processes share one build (both build, one publishes), and sampling weights."""
import json
import logging
import os
import pickle
from pathlib import Path

import pytest

from data.datasets import TokenizedDataset, mixture_blocks
from models.loading import load_tokenizer
from tests.forked_ranks import run_script
from tests.trainer_runs import REPO, read_scalars, train_in_process

ALPACA = "data/samples/alpaca_zh_en_dev.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def build(tokenizer, cache_dir, files=ALPACA, **options):
    return TokenizedDataset({"main": {"files": str(files)}}, tokenizer, cache_dir=str(cache_dir),
                            **{"max_seq_length": 128, **options})


def rows(dataset):
    return [dataset[i] for i in range(len(dataset))]


def cache_of(dataset):
    return dataset.caches[0]


def test_hit_miss_and_rebuild_on_every_input(tmp_path, tokenizer):
    data = tmp_path / "d.jsonl"
    data.write_bytes((REPO / ALPACA).read_bytes())
    first = build(tokenizer, tmp_path / "cache", data)
    assert cache_of(first).built
    again = build(tokenizer, tmp_path / "cache", data)
    assert not cache_of(again).built and cache_of(again).directory == cache_of(first).directory
    assert rows(again) == rows(first)

    changed = {"max_seq_length": build(tokenizer, tmp_path / "cache", data, max_seq_length=64),
               "template": build(tokenizer, tmp_path / "cache", data, template="en"),
               "packing": build(tokenizer, tmp_path / "cache", data, packing=True)}
    other_tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>")
    other_tokenizer.add_tokens(["<new>"])
    changed["tokenizer"] = build(other_tokenizer, tmp_path / "cache", data)
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    changed["file mtime"] = build(tokenizer, tmp_path / "cache", data)
    for what, dataset in changed.items():
        assert cache_of(dataset).built, what
    directories = {cache_of(d).directory for d in [first, *changed.values()]}
    assert len(directories) == 1 + len(changed)
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_parallel_and_sharded_builds_give_the_same_rows(tmp_path, tokenizer):
    files = [ALPACA, "data/samples/coig_sample.json", "data/samples/wudao_sample.json"]
    def make(name, **options):
        return TokenizedDataset({"m": {"files": files}}, tokenizer, max_seq_length=64, cache_dir=str(tmp_path / name),
                                **options)
    serial, parallel, sharded = make("a", num_proc=1), make("b", num_proc=2), make("c", shard_tokens=500)
    assert len(cache_of(sharded).meta["shards"]) > 3 and len(cache_of(serial).meta["shards"]) == 1
    assert rows(serial) == rows(parallel) == rows(sharded)
    assert [serial.locations(i) for i in range(len(serial))] == [sharded.locations(i) for i in range(len(sharded))]


def test_dataset_pickles_without_its_memory_maps(tmp_path, tokenizer):
    dataset = build(tokenizer, tmp_path)
    dataset[0]
    assert cache_of(dataset)._shards
    clone = pickle.loads(pickle.dumps(dataset))
    assert not cache_of(clone)._shards and rows(clone) == rows(dataset)


def run_ranks(files, cache_dir) -> list[tuple[int, dict | str]]:
    """Two ranks of tests/cache_build_rank.py, forked: (exit code, its JSON or else its stderr) per rank."""
    world = run_script("-m tests.cache_build_rank", [str(files), str(cache_dir)], timeout=300, nproc=2)
    return [(rank.returncode, json.loads(rank.stdout.strip().splitlines()[-1]) if rank.stdout.strip() else rank.stderr)
            for rank in world.ranks]


def test_two_ranks_share_one_build_and_later_runs_reuse_it(tmp_path, tokenizer):
    (rank0_code, rank0), (rank1_code, rank1) = run_ranks(REPO / ALPACA, tmp_path)
    assert rank0_code == rank1_code == 0, (rank0, rank1)
    assert rank0["built"] and rank1["built"]  # neither found a cache: they built it
    assert rank0["dir"] == rank1["dir"] and rank0["rows"] == rank1["rows"]
    assert [p.name for p in tmp_path.iterdir()] == [Path(rank0["dir"]).name]  # the build folder became the cache
    later = build(tokenizer, tmp_path, REPO / ALPACA)  # a later run (here: this process)
    assert not cache_of(later).built and str(cache_of(later).directory) == rank0["dir"]
    assert rows(later) == rank0["rows"]


def test_a_failed_build_on_rank_0_stops_every_rank(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"\n', encoding="utf-8")
    results = run_ranks(bad, tmp_path / "cache")
    assert [code for code, _ in results] == [3, 3], results
    assert f"{bad}:2: malformed JSON" in results[0][1]["error"]
    assert f"{bad}:2: malformed JSON" in results[1][1]["error"] and "failed on rank 0" in results[1][1]["error"]
    [building] = (tmp_path / "cache").iterdir()  # no cache: the build folder only, holding the failure
    assert building.name.startswith(".build-") and (building / "piece-00000.failed.json").is_file()


def test_weights_repeat_and_subsample_deterministically(tmp_path, tokenizer):
    assert mixture_blocks([10, 4], [1.0, 2.0], seed=0) == [(0, None, 10), (1, None, 4), (1, None, 4)]
    [(source, kept, count)] = mixture_blocks([10], [0.5], seed=0)
    assert count == 5 and len(set(kept.tolist())) == 5 and kept.tolist() == sorted(kept.tolist())
    assert kept.tolist() == mixture_blocks([10], [0.5], seed=0)[0][1].tolist()
    assert kept.tolist() != mixture_blocks([10], [0.5], seed=1)[0][1].tolist()

    sources = {"alpaca": {"files": ALPACA, "weight": 0.5}, "coig": {"files": "data/samples/coig_sample.json", "weight": 3}}
    mix = TokenizedDataset(sources, tokenizer, max_seq_length=128, cache_dir=str(tmp_path), seed=7)
    assert len(mix) == 12 + 3 * 12
    assert mix.report["sources"]["coig"]["rows_in_mix"] == 36 and mix.report["sources"]["alpaca"]["rows_in_mix"] == 12
    coig_rows = [mix.locations(i)[0] for i in range(12, len(mix))]
    assert coig_rows[:12] == coig_rows[12:24] == coig_rows[24:]


def test_do_preprocess_builds_the_cache_that_packed_training_reuses(tmp_path):
    cache_dir = [f"data.cache_dir={tmp_path / 'cache'}"]
    train_in_process(tmp_path / "pre", cache_dir + ["do_preprocess=true"], config=("conf/demo", "pretrain"))
    [cache] = list((tmp_path / "cache").iterdir())
    train_in_process(tmp_path / "run", cache_dir + ["max_steps=6", "logging_steps=1"], config=("conf/demo", "pretrain"))
    source = json.loads((tmp_path / "run" / "data_train.json").read_text(encoding="utf-8"))["sources"]["main"]
    assert source["cache"] == str(cache) and not source["cache_built_now"]
    scalars = read_scalars(tmp_path / "run")
    assert len(scalars["train/loss"]) == 6
    assert all(value > 0.8 for _, value in scalars["train/non_pad_fraction"])  # packed rows: little padding


def test_a_build_shows_progress_and_logs_each_source(tmp_path, capsys, caplog):
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>")
    with caplog.at_level(logging.INFO, logger="data.cache"):
        TokenizedDataset({"zh": {"files": "data/samples/alpaca_zh_en_dev.jsonl"}, "wiki": {"files": "data/samples/wudao_sample.json"}},
                         tokenizer, cache_dir=str(tmp_path))
    bar = capsys.readouterr().err
    size = Path("data/samples/alpaca_zh_en_dev.jsonl").stat().st_size
    assert "tokenizing train/zh" in bar and "tokenizing train/wiki" in bar and "pieces 1/1" in bar and "tokens/s" in bar
    assert f"{size / 1024:.2f}k/{size / 1024:.2f}k" in bar  # bytes read of the bytes to read (the ETA's basis)
    built = [r.getMessage() for r in caplog.records if " built: " in r.getMessage()]
    assert len(built) == 2 and built[0].endswith(" 1 pieces") and "24 records, 0 skipped" in built[0]
