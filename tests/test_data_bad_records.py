"""Bad records: `error` stops with one line naming file, line and reason; `skip` skips, counts by reason,
logs and writes the summary. Nothing is dropped silently."""
import json
import logging

import pytest

from data.datasets import TokenizedDataset
from data.records import DataError
from general_util.errors import ConfigError
from models.loading import load_tokenizer

GOOD = b'{"instruction": "a", "output": "b"}\n'
# kind -> (file name, bytes, line of the bad record, reason in the message)
CASES = {
    "malformed JSON": ("d.jsonl", GOOD + b'{"instruction": "a", "output": "b"\n', 2, "malformed JSON"),
    "missing field": ("d.jsonl", GOOD + b'{"instruction": "a"}\n', 2, "missing field 'output'"),
    "wrong type": ("d.jsonl", GOOD + b'{"instruction": "a", "output": 3}\n', 2, "field 'output' is int, expected str"),
    "empty response": ("d.jsonl", GOOD + b'{"instruction": "a", "output": " "}\n', 2, "empty response ('output')"),
    "not valid UTF-8": ("d.jsonl", GOOD + b'{"instruction": "a", "output": "\xff"}\n', 2, "not valid UTF-8"),
    "not valid UTF-8 in a JSON list": ("d.json", b'[\n{"text": "ok"},\n{"text": "\xfe"}\n]', 3, "not valid UTF-8"),
    "not valid UTF-8 in text": ("d.txt", b"good\n\nbad \xff\n", 3, "not valid UTF-8"),
    "malformed JSON list": ("d.json", b'[\n{"text": "ok"},\n{"text": }\n]', 3, "malformed JSON"),
    "unrecognised record": ("d.jsonl", GOOD + b'{"question": "q"}\n', 2, "unrecognised record"),
    "empty text": ("d.jsonl", b'{"text": "ok"}\n{"text": ""}\n', 2, "empty text"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def dataset(files, tokenizer, tmp_path, policy):
    return TokenizedDataset({"main": {"files": [str(f) for f in files]}}, tokenizer, max_seq_length=64,
                            cache_dir=str(tmp_path / "cache"), on_bad_record=policy, report_dir=str(tmp_path / "out"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_names_file_line_and_reason(tmp_path, tokenizer, case):
    name, content, line, reason = CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        dataset([path], tokenizer, tmp_path, "error")
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: {reason}") and "\n" not in message
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".build-")]  # no cache, only a build


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_counts_the_bad_record_and_keeps_the_rest(tmp_path, tokenizer, case):
    name, content, line, reason = CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    data = dataset([path], tokenizer, tmp_path, "skip")
    assert len(data) == 1 and data.report["skipped"] == 1 and data.report["examples"] == 1
    source = data.report["sources"]["main"]
    assert sum(source["by_reason"].values()) == 1 and source["first"][0].startswith(f"{path}:{line}: {reason}")


def test_empty_file_in_both_modes(tmp_path, tokenizer):
    good, empty = tmp_path / "good.jsonl", tmp_path / "empty.jsonl"
    good.write_bytes(GOOD)
    empty.write_bytes(b"\n  \n")
    with pytest.raises(DataError, match=rf"^{empty}: empty file"):
        dataset([good, empty], tokenizer, tmp_path, "error")
    data = dataset([good, empty], tokenizer, tmp_path, "skip")
    assert data.report["sources"]["main"]["by_reason"] == {"empty file": 1} and len(data) == 1


def test_skip_summary_is_logged_and_written(tmp_path, tokenizer, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(GOOD * 3 + b"{oops\n" + b'{"instruction": "a", "output": ""}\n' * 2 + b'{"output": "b"}\n')
    with caplog.at_level(logging.INFO, logger="data.datasets"):
        data = dataset([path], tokenizer, tmp_path, "skip")
    report = json.loads((tmp_path / "out" / "data_train.json").read_text(encoding="utf-8"))
    assert report["records"] == 7 and report["skipped"] == 4 and report["examples"] == 3 and report["rows"] == 3
    source = report["sources"]["main"]
    assert source["by_reason"] == {"empty response": 2, "malformed JSON": 1, "missing field": 1}
    assert [entry.split(": ")[0] for entry in source["first"]] == [f"{path}:{n}" for n in (4, 5, 6, 7)]
    assert data.report == report
    log = caplog.text
    assert "7 records read from 1 file(s), 4 skipped, 3 samples trained on" in log
    assert "skipped empty response ×2, malformed JSON ×1, missing field ×1; first: " + f"{path}:4" in log


def test_a_source_without_usable_records_is_an_error_even_when_skipping(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{oops\n")
    with pytest.raises(DataError, match=rf"^{path}: no usable records: all 1 skipped"):
        dataset([path], tokenizer, tmp_path, "skip")


@pytest.mark.parametrize("options, message", [
    ({"sources": {"main": {"files": "x.jsonl", "wieght": 2}}},
     "sources.main={'files': 'x.jsonl', 'wieght': 2}: use the keys"),
    ({"sources": {"main": {"files": "x.jsonl", "weight": -1}}}, "sources.main.weight=-1: must be ≥ 0"),
    ({"template": "fr"}, "template='fr': unknown prompt template; use one of ['en', 'none', 'panda', 'zh', 'chat']"),
    ({"template": {"preset": "zh", "usr": "{message}"}}, "template.usr: not a template field"),
    ({"template": {"user": "{msg}"}}, "template.user='{msg}': may only use {message}"),
    ({"truncation": "left"}, "truncation='left': use one of proportional, context_first, drop"),
    ({"coig_rounds": "each"}, "coig_rounds='each': use one of dialogue, per_round"),
    ({"on_bad_record": "ignore"}, "on_bad_record='ignore': use one of error, skip"),
])
def test_invalid_settings_are_one_line_errors(tmp_path, tokenizer, options, message):
    arguments = {"sources": {"main": {"files": "data/samples/alpaca_zh_en_dev.jsonl"}}, "cache_dir": str(tmp_path),
                 **options}
    with pytest.raises(ConfigError) as error:
        TokenizedDataset(tokenizer=tokenizer, **arguments)
    assert str(error.value).startswith(message)
