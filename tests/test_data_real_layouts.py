"""Public corpora in their published layouts (fixtures in tests/fixtures/data/ are our own small files in
exactly those schemas): record counts, and the decoded loss masks (what is trained, what is context).

Layouts checked against: wikiextractor 3.0.7 `--json` (attardi/wikiextractor, extract.py), MOSS's SFT samples
(OpenMOSS/MOSS f7c33098, SFT_data/conversations/...: one pretty-printed object per file), LLaMA-Factory's
data/glaive_toolcall_zh_demo.json (conversations + tools string), OpenAI's chat fine-tuning format
(tool_calls with JSON-string arguments, role tool, content parts), one-document-per-line text
(UER's CLUECorpusSmall_sampled.txt), and the original PandaLLM recipes (data/collators of dandelionsllm/pandallm).
"""
import json
from pathlib import Path

import pytest

from data.datasets import TokenizedDataset
from data.formats import Example, RecordOptions, to_examples
from data.readers import expand_files, read_records
from data.records import DataError, Record
from data.templates import get_template
from models.loading import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "data"
NONE = get_template("none")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def build(tmp_path, tokenizer, files, **options):
    return TokenizedDataset({"main": {"files": files}}, tokenizer, max_seq_length=options.pop("max_seq_length", 1024),
                            template=options.pop("template", "none"), cache_dir=str(tmp_path / "cache"), **options)


def spans(tokenizer, item) -> tuple[list[str], list[str]]:
    """(trained runs, untrained runs) of a row, decoded."""
    runs, current, flag = [], [], None
    for token, label in zip(item["input_ids"], item["labels"]):
        trained = label != -100
        if flag is not None and trained != flag:
            runs.append((flag, current))
            current = []
        current.append(token)
        flag = trained
    runs.append((flag, current))
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    return [decode(ids) for f, ids in runs if f], [decode(ids) for f, ids in runs if not f]


def test_wikiextractor_json_output_is_raw_text_not_wudao(tmp_path, tokenizer):
    folder = FIXTURES / "wikiextractor"
    assert [p.name for p in expand_files(str(folder), (".json", ".jsonl"))] == ["wiki_00"]  # no suffix, still found
    records = list(read_records(folder / "AA" / "wiki_00"))
    assert [r.data["title"] for r in records] == ["数学", "哲学", "物理学"] and [r.line for r in records] == [1, 2, 3]
    assert to_examples(records[1], NONE) == [Example((("哲学是研究普遍的、基本问题的学科。", True),), document=True)]
    data = build(tmp_path, tokenizer, str(folder), on_bad_record="skip")
    assert data.report["records"] == 3 and data.report["skipped"] == 0 and data.report["examples"] == 3


def test_moss_one_object_per_file_with_plugin_steps(tmp_path, tokenizer):
    files = sorted((FIXTURES / "moss").glob("*.json"))
    assert [len(list(read_records(path))) for path in files] == [1, 1]  # pretty-printed objects, not JSON lines
    data = build(tmp_path, tokenizer, str(FIXTURES / "moss"))
    assert data.report["records"] == 2 and data.report["examples"] == 2
    plugin = next(i for i in range(len(data)) if "calculator" in data.locations(i)[0])
    trained, context = spans(tokenizer, data[plugin])
    trained_text, context_text = "".join(trained), "".join(context)
    # the model is trained to write its thoughts, the command and the answer; the tool's result is context
    assert '<|Commands|>: Calculate("16*12")<eoc>' in trained_text and "需要调用计算器" in trained_text
    assert "16乘12等于192" in trained_text and "如果是直角三角形" in trained_text
    assert 'Calculate("16*12") => 192' in context_text and "=> 192" not in trained_text
    assert "Capabilities and tools that MOSS can possess" in context_text  # meta instruction kept
    assert "16乘12" not in context_text.replace("请帮我计算一下16乘12", "")  # the question is context, once


def test_moss_meta_instruction_can_be_dropped():
    record = next(read_records(FIXTURES / "moss" / "harmless_conversation_1.json"))
    kept = to_examples(record, NONE)[0].pieces[0][0]
    dropped = to_examples(record, NONE, RecordOptions(moss_meta_instruction="drop"))[0].pieces[0][0]
    assert kept.startswith("You are an AI assistant whose name is MOSS.") and dropped.startswith("如何学习编程？")


def test_sharegpt_tool_calls_are_trained_and_observations_are_context(tmp_path, tokenizer):
    data = build(tmp_path, tokenizer, str(FIXTURES / "glaive_toolcall_zh_demo.json"))
    assert data.report["records"] == 2 and data.report["examples"] == 2
    trained, context = spans(tokenizer, data[0])
    assert '"name": "get_weather"' in trained[0] and trained[1].startswith("北京今天晴")
    assert any('"weather": "晴"' in c for c in context) and any("查询城市天气" in c for c in context)  # tools + result
    assert not any("晴" in c and "气温" in c for c in context)
    joke = to_examples(Record(json.loads((FIXTURES / "glaive_toolcall_zh_demo.json").read_text())[1], "g.json", 2),
                       get_template("zh"))[0]
    assert "可用工具" not in joke.pieces[0][0]  # its tools field is "[]": no tools block


def test_chat_messages_take_tools_as_json_and_pretty_printed_calls():
    chat = get_template("chat")
    call = json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}, ensure_ascii=False, indent=2)
    record = {"conversations": [{"from": "human", "value": "天气？"}, {"from": "function_call", "value": call},
                                {"from": "observation", "value": "晴"}, {"from": "gpt", "value": "晴天。"}],
              "tools": '[{"name": "get_weather"}]'}
    [example] = to_examples(Record(record, "t.json", 1), chat)
    assert example.tools == [{"name": "get_weather"}]
    assert example.messages[1]["tool_calls"] == [{"type": "function", "function": {"name": "get_weather",
                                                                                    "arguments": {"city": "北京"}}}]
    with pytest.raises(DataError, match=r"^t.json:1: field 'tools' is not a JSON list"):
        to_examples(Record({**record, "tools": "get_weather: the weather of a city"}, "t.json", 1), chat)


def test_openai_messages_with_tool_calls_and_content_parts(tmp_path, tokenizer):
    path = FIXTURES / "openai_tools.jsonl"
    with pytest.raises(DataError, match=rf"^{path}:3: messages\[1\]\.content part 2 is of type 'image_url'"):
        build(tmp_path, tokenizer, str(path))
    data = build(tmp_path, tokenizer, str(path), on_bad_record="skip")
    assert data.report["skipped"] == 1 and data.report["sources"]["main"]["by_reason"] == {"non-text content part": 1}
    [first] = to_examples(next(read_records(path)), NONE)
    assert first.pieces[1] == ('{"name": "get_weather", "arguments": {"city": "Paris"}}', True)
    assert first.pieces[2] == ('{"weather": "rain"}\n', False) and first.pieces[3] == ("It is raining in Paris.", True)
    assert '"description": "Weather of a city"' in first.pieces[0][0]  # the tools are context
    parts = to_examples(Record(json.loads(path.read_text().splitlines()[1]), str(path), 2), NONE)[0]
    assert parts.pieces == (("Describe spring.\nOne sentence.\n", False), ("Spring is when flowers bloom.", True))


def test_text_with_one_document_per_line(tmp_path, tokenizer):
    path = FIXTURES / "one_document_per_line.txt"
    assert [r.data["text"] for r in read_records(path)] == ["第一篇文档讲春天。", "第二篇文档讲夏天。", "第三篇文档讲秋天。"]
    assert len(list(read_records(path, text_documents="blank_line"))) == 1
    data = build(tmp_path, tokenizer, str(path))
    assert data.report["examples"] == 3
    assert sum(row["input_ids"].count(tokenizer.eos_token_id) for row in (data[i] for i in range(len(data)))) == 3


def test_panda_preset_reproduces_the_original_record_layout():
    panda = get_template("panda")
    record = lambda data: Record(data, "mixed.json", 4)  # noqa: E731
    # prompt = instruction + " " + input; trained sequence = prompt + " " + response + EOS
    assert to_examples(record({"instruction": "翻译", "input": "猫", "output": "cat"}), panda)[0].pieces == (
        ("翻译 猫 ", False), ("cat", True))
    assert to_examples(record({"instruction": "问", "input": "", "output": "答"}), panda)[0].pieces == (
        ("问  ", False), ("答", True))  # the field exists, so " " + "" was appended
    assert to_examples(record({"instruction": "问", "output": "答"}), panda)[0].pieces == (("问 ", False), ("答", True))
    picked = to_examples(record({"instruction": ["甲", "乙", "丙"], "output": "x"}), panda)[0].pieces[0][0]
    assert picked in ("甲 ", "乙 ", "丙 ") and to_examples(record({"instruction": ["甲", "乙", "丙"], "output": "x"}),
                                                             panda)[0].pieces[0][0] == picked  # seeded by the record
    assert to_examples(record({"text": "一段文字", "instruction": "i", "output": "o"}), panda)[0].document  # text wins
    assert not to_examples(record({"text": "一段文字", "instruction": "i", "output": "o"}), NONE)[0].document


def test_coig_rounds_as_one_sample_per_round():
    rounds = [{"inputs": "问一", "targets": "答一"}, {"inputs": "问二", "targets": "答二"}, {"inputs": "问三", "targets": "答三"}]
    examples = to_examples(Record(rounds, "coig_data.json", 2), get_template("panda"), RecordOptions(coig_rounds="per_round"))
    assert [e.pieces for e in examples] == [
        (("\n\n问一 ", False), ("答一", True)),
        (("问一\n\n答一\n\n问二 ", False), ("答二", True)),
        (("问一\n\n答一\n\n问二\n\n答二\n\n问三 ", False), ("答三", True))]
    [dialogue] = to_examples(Record(rounds, "coig_data.json", 2), NONE)
    assert [trained for _, trained in dialogue.pieces] == [False, True] * 3


def test_format_detection_needs_the_required_fields():
    wiki = Record({"id": "1", "url": "u", "title": "标题", "text": "正文"}, "w.jsonl", 1)
    assert to_examples(wiki, NONE)[0].pieces == (("正文", True),)
    with pytest.raises(DataError, match=r"^a.jsonl:3: missing field 'output' for the alpaca layout"):
        to_examples(Record({"instruction": "i", "input": "x"}, "a.jsonl", 3), NONE)
    with pytest.raises(DataError, match=r"unrecognised record with keys \['question'\]"):
        to_examples(Record({"question": "q"}, "a.jsonl", 3), NONE)


def test_llamafactory_v1_messages_with_value_parts_and_loss_weight(tmp_path, tokenizer):
    """LLaMA-Factory's v1 layout (its data/v1_sft_demo.jsonl, tests/fixtures/data/llamafactory_v1/SOURCE.md): content
    parts {"type": "text", "value": ...} and loss_weight 0.0 (context) / 1.0 (trained) per message."""
    path = FIXTURES / "llamafactory_v1" / "v1_sft_demo.jsonl"
    records = list(read_records(path))
    assert [to_examples(r, NONE)[0].pieces[0] for r in records] == [
        ("hi\n", False), ("Who are you?\n", False), ("你好\n", False), ("你是谁\n", False)]
    assert to_examples(records[0], NONE)[0].pieces[1] == (
        "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?", True)
    data = build(tmp_path, tokenizer, str(path))
    assert data.report["records"] == 4 and data.report["skipped"] == 0
    trained, context = spans(tokenizer, data[2])
    assert trained == ["您好，我是 {{name}}，一个由 {{author}} 开发的 AI 助手，很高兴认识您。请问我能为您做些什么？</s>"]
    assert context == ["<s>你好\n"]

    def message(role, text, weight, key="value"):
        return {"role": role, "content": [{"type": "text", key: text}], "loss_weight": weight}

    # an answer weighted 0 is context, written as answers are; only the one weighted 1 is trained
    dialogue = {"messages": [message("system", "Be brief.", 0.0), message("user", "Hi", 0.0),
                             message("assistant", "Hello.", 0.0, key="text"), message("user", "Name?", 0.0),
                             message("assistant", "Panda.", 1.0)]}
    zh = get_template("zh")
    [example] = to_examples(Record(dialogue, "v1.jsonl", 7), zh)
    assert [trained for _, trained in example.pieces] == [False, True] and example.pieces[1][0].startswith("Panda.")
    prompt = example.pieces[0][0]
    assert prompt.index("Be brief.") < prompt.index("Hi") < prompt.index("Hello." + zh.assistant_suffix) < prompt.index("Name?")
    [chat] = to_examples(Record(dialogue, "v1.jsonl", 7), get_template("chat"))
    assert [m.get("trained", True) for m in chat.messages if m["role"] == "assistant"] == [False, True]
    for weight, role, reason in [(0.5, "assistant", r"loss_weight=0\.5: use 0 \(context\) or 1"),
                                 (1.0, "user", "loss_weight=1 on a user message: only assistant messages are trained")]:
        bad = {"messages": [message("user", "Hi", 0.0), message("assistant", "Hello.", 1.0)]}
        bad["messages"][0 if role == "user" else 1]["loss_weight"] = weight
        with pytest.raises(DataError, match=rf"^v1.jsonl:7: messages\[\d\]\.{reason}"):
            to_examples(Record(bad, "v1.jsonl", 7), zh)
    only_context = {"messages": [message("user", "Hi", 0.0), message("assistant", "Hello.", 0.0)]}
    with pytest.raises(DataError, match="empty response"):
        to_examples(Record(only_context, "v1.jsonl", 7), zh)
    no_string = {"messages": [{"role": "user", "content": [{"type": "text"}]}, message("assistant", "Hello.", 1.0)]}
    with pytest.raises(DataError, match=r"messages\[1\]\.content part 1 is a text part without a string 'text' or 'value'"):
        to_examples(Record(no_string, "v1.jsonl", 7), zh)
