"""LLaMA-Factory's dataset_info.json entries as sources: the samples its converters build from its own demo data
(tests/fixtures/data/llamafactory: excerpts of hiyouga/LLaMA-Factory@ff6d4d12 data/), hub entries from the local
hub cache, and one-line refusals of what is not supported."""
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.datasets import TokenizedDataset
from data.llamafactory import convert, load_entry
from data.readers import expand_files, read_records
from general_util.errors import ConfigError
from models.loading import load_tokenizer

LF = Path(__file__).parent / "fixtures" / "data" / "llamafactory"
INFO = LF / "dataset_info.json"
# LLaMA-Factory's Role values for our ShareGPT layout's roles
ROLE = {"human": "user", "gpt": "assistant", "observation": "observation", "function_call": "function"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def samples(name: str) -> list[dict]:
    """Each record of the entry as LLaMA-Factory's converter output: _prompt, _response, _system, _tools."""
    entry = load_entry(INFO, name)
    out = []
    for path in expand_files(entry["files"], split=entry["split"]):
        for record in read_records(path, text_documents=entry["text_documents"]):
            data = convert(record, entry["layout"]).data
            turns = [{"role": ROLE[t["from"]], "content": t["value"]} for t in data["conversations"]]
            out.append({"_prompt": turns[:-1], "_response": turns[-1:], "_system": data["system"] or "",
                        "_tools": data["tools"] or ""})
    return out


def raw(name: str) -> list[dict]:
    return json.loads((LF / name).read_text(encoding="utf-8"))


def test_alpaca_entries_give_llamafactorys_samples():
    demo, got = raw("alpaca_zh_demo.json"), samples("alpaca_zh_demo")
    assert demo[0]["input"] == "" and got[0]["_prompt"] == [{"role": "user", "content": demo[0]["instruction"]}]
    assert got[1]["_prompt"] == [{"role": "user", "content": demo[1]["instruction"] + "\n" + demo[1]["input"]}]
    assert [s["_response"] for s in got] == [[{"role": "assistant", "content": r["output"]}] for r in demo]
    assert {(s["_system"], s["_tools"]) for s in got} == {("", "")}
    assert samples("identity")[0]["_prompt"] == [{"role": "user", "content": "hi"}]


def test_sharegpt_entries_give_llamafactorys_samples():
    demo, got = raw("glaive_toolcall_zh_demo.json"), samples("glaive_toolcall_zh_demo")
    first = demo[0]["conversations"]
    assert [t["from"] for t in first] == ["human", "function_call", "observation", "gpt"]
    assert got[0]["_prompt"] == [{"role": "user", "content": first[0]["value"]},
                                 {"role": "function", "content": first[1]["value"]},
                                 {"role": "observation", "content": first[2]["value"]}]
    assert got[0]["_response"] == [{"role": "assistant", "content": first[3]["value"]}]
    assert [s["_tools"] for s in got] == [r["tools"] for r in demo] and got[1]["_tools"] == "[]"
    assert [len(s["_prompt"]) for s in got] == [3, 3, 7]


def test_entries_build_as_sources_with_file_and_line(tmp_path, tokenizer):
    data = TokenizedDataset({"alpaca": {"dataset": "alpaca_zh_demo"}, "tools": {"dataset": "glaive_toolcall_zh_demo",
                                                                                 "weight": 2.0}},
                            tokenizer, max_seq_length=256, cache_dir=str(tmp_path), dataset_info=str(INFO))
    assert len(data) == 3 + 2 * 3
    assert data.locations(0) == [f"{LF / 'alpaca_zh_demo.json'}:2"]
    c4 = TokenizedDataset({"c4": {"dataset": "c4_demo"}, "wiki": {"dataset": "wiki_demo"}}, tokenizer, template="none",
                          max_seq_length=4096, cache_dir=str(tmp_path), dataset_info=str(INFO))
    assert c4.report["sources"]["c4"]["examples"] == 2 and c4.report["sources"]["wiki"]["examples"] == 2  # per line
    first = json.loads((LF / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()[0])["text"]
    assert tokenizer.decode(c4[0]["input_ids"], skip_special_tokens=True).strip() == first.strip()


def test_a_hub_entry_is_read_from_the_local_hub_cache(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"dataset_info.json: lima: hf_hub_url llamafactory/lima is not in the "
                                          r"local hub cache .*huggingface-cli download --repo-type dataset llamafactory/lima"):
        load_entry(INFO, "lima")
    repo = tmp_path / "hub" / "datasets--llamafactory--lima"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    shard = repo / "snapshots" / "abc123" / "data" / "train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    conversations = [[{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}],
                     [{"from": "human", "value": "only a question"}]]  # odd: LLaMA-Factory skips it
    pq.write_table(pa.Table.from_pylist([{"conversations": c} for c in conversations]), shard)
    data = TokenizedDataset({"lima": {"dataset": "lima"}}, tokenizer, max_seq_length=64, cache_dir=str(tmp_path / "c"),
                            dataset_info=str(INFO), on_bad_record="skip")
    assert len(data) == 1 and data.report["skipped"] == 1
    assert "1 turns: a conversation ends with an assistant turn (dataset lima" in data.report["sources"]["lima"]["first"][0]


@pytest.mark.parametrize("name, message", [
    ("kto_en_demo", "kto_en_demo: KTO columns are not supported"),
    ("mllm_demo", "mllm_demo: image columns are not supported"),
    ("no_such", "no_such: no such dataset in it"),
])
def test_unsupported_entries_are_one_line_errors(name, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_entry(INFO, name)
    assert "\n" not in str(error.value)
