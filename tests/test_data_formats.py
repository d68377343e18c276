"""Every supported file layout and record format → exact records (with file:line) and examples."""
import gzip

import pytest

from data.formats import Example, to_examples
from data.readers import expand_files, read_records
from data.records import Record
from data.templates import get_template

ZH = get_template("zh")


def records(path):
    return [(r.data, r.line) for r in read_records(path)]


def test_jsonl_json_list_and_text_with_line_numbers(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two"}\n', encoding="utf-8")
    assert records(jsonl) == [({"text": "one"}, 1), ({"text": "two"}, 3)]

    listed = tmp_path / "b.json"
    listed.write_text('[\n {"title": "t", "content": "c"},\n {"content": "d"\n }\n]\n', encoding="utf-8")
    assert records(listed) == [({"title": "t", "content": "c"}, 2), ({"content": "d"}, 3)]

    belle = tmp_path / "belle.json"  # BELLE ships JSON lines under a .json name
    belle.write_text('{"instruction": "i", "output": "o"}\n', encoding="utf-8")
    assert records(belle) == [({"instruction": "i", "output": "o"}, 1)]

    text = tmp_path / "c.txt"
    text.write_text("first doc\nstill first\n\n\nsecond doc\n", encoding="utf-8")
    assert records(text) == [({"text": "first doc\nstill first"}, 1), ({"text": "second doc"}, 5)]


@pytest.mark.parametrize("name", ["a.jsonl.gz", "b.json.gz", "c.txt.gz"])
def test_gzip_reads_like_the_plain_file(tmp_path, name):
    content = {"a.jsonl": '{"text": "x"}\n', "b.json": '[{"text": "x"}]', "c.txt": "x\n"}[name[:-3]]
    with gzip.open(tmp_path / name, "wt", encoding="utf-8") as f:
        f.write(content)
    assert records(tmp_path / name) == [({"text": "x"}, 1)]


def test_bundled_samples_in_their_real_layouts():
    expected = {"alpaca_zh_en_train.jsonl": 148, "wudao_sample.json": 8, "coig_sample.json": 12,
                "sharegpt_sample.json": 8, "moss_sample.jsonl": 4, "pretrain_sample.jsonl": 4,
                "pretrain_sample.txt.gz": 4}
    for name, count in expected.items():
        read = list(read_records(expand_files(f"data/samples/{name}")[0]))
        assert len(read) == count, name
        assert read[0].source.endswith(name)
        assert [to_examples(r, ZH) for r in read]  # every record converts
    wudao = list(read_records(expand_files("data/samples/wudao_sample.json")[0]))
    assert wudao[1].line == 10 and wudao[1].data["title"] == "茶"


def test_directory_glob_and_list_expand_sorted(tmp_path):
    for name in ["b.jsonl", "a.json", "sub/c.txt.gz", "notes.md"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    from data.readers import DATA_SUFFIXES
    assert [p.name for p in expand_files(str(tmp_path), DATA_SUFFIXES)] == ["a.json", "b.jsonl", "c.txt.gz"]
    assert [p.name for p in expand_files(str(tmp_path / "*.json*"))] == ["a.json", "b.jsonl"]
    assert [p.name for p in expand_files([str(tmp_path / "b.jsonl"), str(tmp_path / "a.json")])] == ["b.jsonl", "a.json"]


def convert(data) -> Example:
    [example] = to_examples(Record(data, "f.jsonl", 7), ZH)
    return example


def test_alpaca_and_belle_instruction_lists():
    assert convert({"instruction": "翻译", "input": "猫", "output": "cat"}) == Example(
        ((ZH.format("翻译", "猫"), False), ("cat", True)))
    assert convert({"instruction": ["第一行", "第二行"], "output": "好"}) == Example(
        ((ZH.format("第一行\n第二行"), False), ("好", True)))


def test_coig_single_and_multi_round():
    assert convert({"inputs": "问", "targets": "答"}) == Example(((ZH.format("问"), False), ("答", True)))
    assert convert([{"inputs": "问一", "targets": "答一"}, {"inputs": "问二", "targets": "答二"}]) == Example((
        (ZH.system + ZH.user_turn("问一"), False), ("答一", True), (ZH.user_turn("问二"), False), ("答二", True)))


def test_conversations_train_every_assistant_turn_only():
    sharegpt = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "u1"},
                                  {"from": "gpt", "value": "a1"}, {"from": "human", "value": "u2"},
                                  {"from": "gpt", "value": "a2"}, {"from": "human", "value": "unanswered"}]}
    assert convert(sharegpt) == Example((("S" + ZH.user_turn("u1"), False), ("a1", True),
                                         (ZH.user_turn("u2"), False), ("a2", True)))
    messages = {"messages": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}]}
    assert convert(messages) == Example(((ZH.system + ZH.user_turn("u1"), False), ("a1", True)))
    moss = {"meta_instruction": "M", "chat": {
        "turn_2": {"Human": "<|Human|>: u2<eoh>\n", "MOSS": "<|MOSS|>: a2<eom>\n"},
        "turn_1": {"Human": "<|Human|>: u1<eoh>\n", "MOSS": "<|MOSS|>: a1<eom>\n"}}}
    assert convert(moss) == Example((("M" + ZH.user_turn("u1"), False), ("a1", True),
                                     (ZH.user_turn("u2"), False), ("a2", True)))


def test_documents_are_fully_trained_text():
    assert convert({"title": "长江", "content": "长江很长。"}) == Example((("长江\n长江很长。", True),), document=True)
    assert convert({"content": "无题"}) == Example((("无题", True),), document=True)
    assert convert({"text": "raw"}) == Example((("raw", True),), document=True)


def test_none_template_adds_no_decoration():
    none = get_template("none")
    [example] = to_examples(Record({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
                                   "f", 1), none)
    assert example == Example((("u\n", False), ("a", True)))
    assert none.format("i") == "i\n"
