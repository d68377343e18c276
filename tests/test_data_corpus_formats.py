"""Corpus formats beside JSON and text: a clone of a hub dataset repository (its data/<split>-*.parquet), Parquet
files cut into pieces by row groups, a `datasets` save_to_disk folder (Arrow), zstd-compressed JSON lines, JSON and
text; and JSON read as a stream. Fixtures in tests/fixtures/data/corpora (README there names their sources)."""
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import data.readers as readers
from data.datasets import TokenizedDataset
from data.readers import expand_files, read_records
from data.records import DataError
from models.loading import load_tokenizer

CORPORA = Path(__file__).parent / "fixtures" / "data" / "corpora"
ALPACA = Path("data/samples/alpaca_zh_en_dev.jsonl")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def dataset(tokenizer, tmp_path, files, **options):
    source = {"files": [str(f) for f in files] if isinstance(files, list) else str(files)}
    source.update(options.pop("source", {}))
    return TokenizedDataset({"main": source}, tokenizer, max_seq_length=128, cache_dir=str(tmp_path / "cache"),
                            **options)


def rows(data):
    return [{k: v for k, v in data[i].items() if k != "index"} for i in range(len(data))]


def records(path, **options):
    return [(r.data, r.line) for r in read_records(Path(path), **options)]


def test_a_hub_dataset_clone_gives_the_split_asked_for_with_file_and_row(tmp_path, tokenizer):
    train = dataset(tokenizer, tmp_path, CORPORA / "hub_dataset_repo")
    test = dataset(tokenizer, tmp_path, CORPORA / "hub_dataset_repo", source={"split": "test"})
    assert (len(train), len(test)) == (5, 3)  # the README's num_examples of the two splits
    assert train.locations(0) == [f"{(CORPORA / 'hub_dataset_repo/data/train-00000-of-00001.parquet').resolve()}:1"]
    with pytest.raises(DataError, match=r"no shards of split 'dev' .*\['test', 'train', 'validation'\]"):
        dataset(tokenizer, tmp_path, CORPORA / "hub_dataset_repo", source={"split": "dev"})
    validation = [r.data for r in read_records(CORPORA / "hub_dataset_repo/data/validation-00000-of-00001.parquet")]
    assert validation == [{"text": "the printer jammed again", "label": 0}, {"text": "新买的台灯很亮", "label": 1}]


def test_parquet_pieces_by_row_group_give_the_rows_of_the_same_records_as_json_lines(tmp_path, tokenizer):
    lines = ALPACA.read_text(encoding="utf-8").splitlines()
    table = pa.Table.from_pylist([json.loads(line) for line in lines])
    pq.write_table(table, tmp_path / "alpaca.parquet", row_group_size=5)
    from_parquet = dataset(tokenizer, tmp_path, tmp_path / "alpaca.parquet", piece_bytes=500)
    from_jsonl = dataset(tokenizer, tmp_path, ALPACA)
    assert from_parquet.caches[0].meta["stats"]["pieces"] > 2 and rows(from_parquet) == rows(from_jsonl)
    assert [from_parquet.locations(i) for i in (0, 23)] == [[f"{tmp_path / 'alpaca.parquet'}:{n}"] for n in (1, 24)]
    bad = pa.Table.from_pylist([json.loads(lines[0]), {"question_typo": "x"}, json.loads(lines[1])])
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'bad.parquet'}:2: "):
        dataset(tokenizer, tmp_path, tmp_path / "bad.parquet")


def test_a_save_to_disk_folder_reads_as_its_records(tmp_path, tokenizer):
    folder = CORPORA / "alpaca_save_to_disk"
    assert [p.name for p in expand_files(str(folder), readers.DATA_SUFFIXES)] == \
        ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]  # state.json's order; no .json taken as data
    saved = [r.data for path in expand_files(str(folder)) for r in read_records(path)]
    assert len(saved) == 5 and saved[0]["input"] == "今天天气很好。"
    (tmp_path / "same.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in saved),
                                         encoding="utf-8")
    assert rows(dataset(tokenizer, tmp_path, folder)) == rows(dataset(tokenizer, tmp_path, tmp_path / "same.jsonl"))


def test_zstd_json_lines_json_and_text_read_as_their_uncompressed_selves(tmp_path):
    slimpajama = records(CORPORA / "example_train_0.jsonl.zst")  # two zstd frames, as `cat` of two files gives
    assert [line for _, line in slimpajama] == [1, 2, 3, 4, 5]
    assert slimpajama[1][0]["meta"] == {"redpajama_set_name": "RedPajamaWikipedia"}
    for name, content in [("a.json", json.dumps([{"text": "一"}, {"text": "二"}], indent=1)),
                          ("b.txt", "第一篇。\n\n第二篇\n第二行。\n"), ("c.jsonl", '{"text": "x"}\n\n{"text": "y"}\n')]:
        plain = tmp_path / name
        plain.write_text(content, encoding="utf-8")
        (tmp_path / f"{name}.zst").write_bytes(zstandard.ZstdCompressor().compress(content.encode()))
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(content.encode()))
        assert records(tmp_path / f"{name}.zst") == records(tmp_path / f"{name}.gz") == records(plain) != []


def test_unreadable_compressed_and_lfs_pointer_files_are_one_line_errors(tmp_path):
    (tmp_path / "x.jsonl.zst").write_bytes(b"not zstd at all")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'x.jsonl.zst'}: unreadable file \("):
        records(tmp_path / "x.jsonl.zst")
    (tmp_path / "train-00000-of-00001.parquet").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(DataError, match="a Git LFS pointer, not the data: run `git lfs pull`"):
        records(tmp_path / "train-00000-of-00001.parquet")


def test_json_is_read_as_a_stream_once(tmp_path, monkeypatch):
    items = [{"text": f"文档{i}" * (i % 7), "n": i} for i in range(300)]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    whole = records(listed)
    monkeypatch.setattr(readers, "CHUNK_CHARS", 64)  # a window much smaller than the file: items cross it
    assert records(listed) == whole and [d for d, _ in whole] == items
    assert [line for _, line in whole[:3]] == [2, 6, 10]  # `[`, then 4 lines per item ({, text, n, })
    lines = tmp_path / "lines.json"  # BELLE's JSON lines named .json
    lines.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    read = []
    assert [d for d, _ in records(lines, progress=read.append)] == items
    assert sum(read) == lines.stat().st_size  # read once through (not whole first, then line by line)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(items[:50], indent=1)[:-40], encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{broken}:\d+: malformed JSON"):
        records(broken)
