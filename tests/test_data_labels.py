"""Label masks token by token against hand-built expectations: single and multi-turn dialogues,
truncation that keeps EOS, and documents split into chunks without dropping a token."""
import json

import pytest

from data.datasets import TokenizedDataset
from data.labels import IGNORE_INDEX, build_dialogue, chunk_document
from models.loading import load_tokenizer

M = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def dataset(tmp_path, tokenizer, rows, **options):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return TokenizedDataset({"main": {"files": str(path)}}, tokenizer, template=options.pop("template", "none"),
                            cache_dir=str(tmp_path / "cache"), **options)


def test_single_turn_trains_exactly_the_response_and_eos(tmp_path, tokenizer):
    item = dataset(tmp_path, tokenizer, [{"instruction": "计算 2 加 3。", "output": "2 加 3 等于 5。"}],
                   max_seq_length=64)[0]
    prompt, response = encode(tokenizer, "计算 2 加 3。\n"), encode(tokenizer, "2 加 3 等于 5。")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert item["input_ids"] == [bos] + prompt + response + [eos]
    assert item["labels"] == [M] * (1 + len(prompt)) + response + [eos]


def test_multi_turn_trains_every_assistant_turn_and_no_user_or_system_turn(tmp_path, tokenizer):
    conversation = {"conversations": [{"from": "system", "value": "Be brief. "},
                                      {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                                      {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}
    item = dataset(tmp_path, tokenizer, [conversation], max_seq_length=128)[0]
    prompt1, answer1 = encode(tokenizer, "Be brief. Hi\n"), encode(tokenizer, "Hello!")
    prompt2, answer2 = encode(tokenizer, "2+2?\n"), encode(tokenizer, "4")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert item["input_ids"] == [bos] + prompt1 + answer1 + [eos] + prompt2 + answer2 + [eos]
    assert item["labels"] == ([M] * (1 + len(prompt1)) + answer1 + [eos]
                              + [M] * len(prompt2) + answer2 + [eos])


def test_multi_turn_truncation_cuts_the_oldest_context_first_and_keeps_eos():
    pieces = [([10, 11], False), ([20, 21], True), ([12, 13], False), ([22, 23, 24], True)]
    example = build_dialogue(pieces, 1, 2, max_seq_length=64, truncation="context_first")
    assert not example.truncated
    assert example.input_ids == [1, 10, 11, 20, 21, 2, 12, 13, 22, 23, 24, 2]
    assert example.labels == [M, M, M, 20, 21, 2, M, M, 22, 23, 24, 2]
    # 4 context tokens cut: the first answer lost its start, so its remaining EOS is not trained either
    example = build_dialogue(pieces, 1, 2, max_seq_length=8, truncation="context_first")
    assert example.truncated and not example.prompt_lost
    assert example.input_ids == [1, 2, 12, 13, 22, 23, 24, 2]
    assert example.labels == [M, M, M, M, 22, 23, 24, 2]
    # no room for any context: then the last answer loses its end, never the EOS
    example = build_dialogue(pieces, 1, 2, max_seq_length=4, truncation="context_first")
    assert example.input_ids == [1, 22, 23, 2] and example.labels == [M, 22, 23, 2]


def test_context_first_can_leave_no_prompt_and_says_so():
    pieces = [([10, 11, 12], False), ([20, 21, 22, 23, 24, 25], True)]
    example = build_dialogue(pieces, 1, 2, max_seq_length=6, truncation="context_first")
    assert example.input_ids == [1, 20, 21, 22, 23, 2] and example.truncated and example.prompt_lost


def test_proportional_keeps_a_short_side_whole_and_cuts_long_sides_in_proportion():
    short_prompt = [([10, 11], False), ([20, 21, 22, 23, 24, 25, 26, 27], True)]
    example = build_dialogue(short_prompt, 1, 2, max_seq_length=8)  # budget 6: the prompt (2 ≤ 3) stays whole
    assert example.input_ids == [1, 10, 11, 20, 21, 22, 23, 2] and not example.prompt_lost
    assert example.labels == [M, M, M, 20, 21, 22, 23, 2]
    short_answer = [([10, 11, 12, 13, 14, 15, 16, 17], False), ([20, 21], True)]
    example = build_dialogue(short_answer, 1, 2, max_seq_length=8)  # the answer stays whole, the prompt's oldest go
    assert example.input_ids == [1, 14, 15, 16, 17, 20, 21, 2]
    both_long = [(list(range(100, 112)), False), (list(range(200, 206)), True)]
    example = build_dialogue(both_long, 1, 2, max_seq_length=11)  # budget 9 split 12:6 → 6 + 3
    assert example.input_ids == [1, 106, 107, 108, 109, 110, 111, 200, 201, 202, 2]
    assert example.truncated and not example.prompt_lost


def test_drop_returns_nothing_for_a_long_dialogue_only():
    pieces = [([10, 11], False), ([20, 21, 22], True)]
    assert build_dialogue(pieces, 1, 2, max_seq_length=4, truncation="drop") is None
    assert build_dialogue(pieces, 1, 2, max_seq_length=7, truncation="drop").input_ids == [1, 10, 11, 20, 21, 22, 2]


def test_truncation_report_counts_per_source(tmp_path, tokenizer):
    records = [{"instruction": "短", "output": "长 " * 60}, {"instruction": "x " * 60, "output": "好"},
               {"instruction": "a", "output": "b"}]
    for policy, expected in (("context_first", {"truncated": 2, "prompt_lost": 1, "dropped_too_long": 0, "examples": 3}),
                             ("proportional", {"truncated": 2, "prompt_lost": 0, "dropped_too_long": 0, "examples": 3}),
                             ("drop", {"truncated": 0, "prompt_lost": 0, "dropped_too_long": 2, "examples": 1})):
        (tmp_path / policy).mkdir()
        data = dataset(tmp_path / policy, tokenizer, records, max_seq_length=24, truncation=policy)
        source = data.report["sources"]["main"]
        assert {key: source[key] for key in expected} == expected, policy
        assert {key: data.report[key] for key in expected} == expected


def test_truncated_records_are_counted_and_keep_eos(tmp_path, tokenizer):
    data = dataset(tmp_path, tokenizer, [{"instruction": "x " * 50, "output": "y " * 50}], max_seq_length=16)
    item = data[0]
    assert len(item["input_ids"]) == 16 and item["input_ids"][-1] == item["labels"][-1] == tokenizer.eos_token_id
    assert item["input_ids"][0] == tokenizer.bos_token_id and data.report["truncated"] == 1


def test_chunks_overlap_by_one_token_so_every_token_is_trained_once():
    chunks = chunk_document([5, 6, 7, 8, 9], bos_id=1, eos_id=2, max_seq_length=4)
    assert [c.input_ids for c in chunks] == [[1, 5, 6, 7], [7, 8, 9, 2]]
    assert [c.labels for c in chunks] == [[M, 5, 6, 7], [M, 8, 9, 2]]
    assert [c.input_ids for c in chunk_document([5, 6], 1, 2, max_seq_length=4)] == [[1, 5, 6, 2]]


def test_long_documents_are_split_without_dropping_tokens(tmp_path, tokenizer):
    text = "长江是中国最长的河流。" * 20
    data = dataset(tmp_path, tokenizer, [{"text": text}], max_seq_length=32)
    ids = [tokenizer.bos_token_id] + encode(tokenizer, text) + [tokenizer.eos_token_id]
    rows = [data[i] for i in range(len(data))]
    assert len(rows) == -(-(len(ids) - 1) // 31) and all(len(r["input_ids"]) <= 32 for r in rows)
    assert [t for r in rows for t in r["labels"] if t != M] == ids[1:]
    assert rows[0]["input_ids"] + [t for r in rows[1:] for t in r["input_ids"][1:]] == ids
