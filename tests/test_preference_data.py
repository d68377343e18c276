"""Preference records in the layouts users bring (data/preference.py), checked on the publishers' files: excerpts of
hiyouga/LLaMA-Factory@ff6d4d1 data/dpo_{en,zh}_demo.json (sharegpt ranking, with and without a system turn) and the
record layouts of TRL (explicit prompt as strings or messages; implicit prompt: UltraFeedback binarized as
HuggingFaceH4/ultrafeedback_binarized publishes it, prompt + chosen/rejected message lists repeating it) and
HH-RLHF (Anthropic/hh-rlhf: whole transcripts, as LLaMA-Factory's data/hh_rlhf_en/hh_rlhf_en.py parses them)."""
import json

import numpy as np
import pytest

from data.preference import PairTokenizer, to_pair
from data.records import DataError, Record
from data.templates import get_template
from tests.trainer_runs import REPO

FIXTURES = REPO / "tests" / "fixtures" / "preference"


@pytest.fixture(scope="module")
def tokenizer():
    from models.loading import load_tokenizer
    return load_tokenizer(str(REPO / "models" / "tiny_llama"))


def pair(data, template="zh"):
    return to_pair(Record(data, "f.json", 1), get_template(template))[0]


def decoded(tokenizer, segment, trained=None):
    ids = segment.input_ids if trained is None else segment.input_ids[segment.trained == trained]
    return tokenizer.decode([int(i) for i in ids])


def test_llama_factory_ranking_files_become_pairs_that_share_their_prompt(tokenizer):
    records = json.loads((FIXTURES / "dpo_zh_demo.json").read_text()) + json.loads((FIXTURES / "dpo_en_demo.json").read_text())
    assert any(r["conversations"][0]["from"] == "system" for r in records)
    for template in ("zh", "en", "none"):
        pairs = [pair(r, template) for r in records]
        for result, record in zip(PairTokenizer(tokenizer, 1 << 16)(pairs), records):
            chosen, rejected = result.segments
            assert not result.truncated
            # canonical tokens: each side is its whole rendered text encoded once; only the last response is trained
            assert decoded(tokenizer, chosen, True).strip() == (record["chosen"]["value"] + "</s>").strip()
            assert decoded(tokenizer, rejected, True).strip() == (record["rejected"]["value"] + "</s>").strip()
            start = min(np.flatnonzero(chosen.trained)[0], np.flatnonzero(rejected.trained)[0])
            assert np.array_equal(chosen.input_ids[:start], rejected.input_ids[:start])


def test_alpaca_ranking_trl_ultrafeedback_and_hh_rlhf_layouts():
    alpaca = pair({"instruction": "翻译", "input": "hello", "chosen": "你好", "rejected": "哈喽"})
    assert alpaca.chosen.pieces[:-1] == alpaca.rejected.pieces[:-1] and alpaca.chosen.pieces[-1][0].startswith("你好")
    trl_strings = pair({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}, "en")
    assert "What is 2+2?" in trl_strings.chosen.pieces[0][0]
    ultrafeedback = {"prompt": "Name a colour.", "prompt_id": "abc",
                     "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
                     "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "No."}],
                     "messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
                     "score_chosen": 8.0, "score_rejected": 2.0}
    implicit = pair(ultrafeedback, "en")
    assert implicit.chosen.pieces[0][0].count("Name a colour.") == 1  # the prompt string is not repeated
    explicit = pair({"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
                     "rejected": [{"role": "assistant", "content": "Go away"}]}, "en")
    assert explicit.chosen.pieces[-1][0].startswith("Hello") and explicit.rejected.pieces[-1][0].startswith("Go away")
    hh = pair({"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks.",
               "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Go away."}, "en")
    assert hh.chosen.pieces[-1][0].startswith("Fine, thanks.") and hh.rejected.pieces[-1][0].startswith("Go away.")
    assert len(hh.chosen.pieces) == 4 and hh.chosen.pieces[:-1] == hh.rejected.pieces[:-1]


def test_chat_template_sides_have_exact_masks(tokenizer):
    from tests.tokenizer_kinds import tokenizer as tokenizer_of_kind
    chat = tokenizer_of_kind("llama3")  # Meta-Llama-3-8B-Instruct's chat template (tests/tokenizer_kinds.py)
    record = {"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": [{"role": "assistant", "content": "Red."}],
              "rejected": [{"role": "assistant", "content": "Blue, I think."}]}
    result = PairTokenizer(chat, 512)([pair(record, "chat")])[0]
    chosen, rejected = result.segments
    assert decoded(chat, chosen, True) == "Red.<|eot_id|>"
    assert decoded(chat, rejected, True) == "Blue, I think.<|eot_id|>"
    assert decoded(chat, chosen, False) == decoded(chat, rejected, False)


def test_a_pair_is_cut_the_same_way_on_both_sides(tokenizer):
    record = {"instruction": "长" * 300, "chosen": "好" * 40, "rejected": "坏" * 90}
    result = PairTokenizer(tokenizer, 128)([pair(record)])[0]
    chosen, rejected = result.segments
    assert result.truncated and max(len(chosen.input_ids), len(rejected.input_ids)) == 128
    prompt = [ids[:np.flatnonzero(s.trained)[0]] for s, ids in ((s, s.input_ids) for s in (chosen, rejected))]
    assert np.array_equal(prompt[0], prompt[1]) and len(prompt[0]) > 1
    assert chosen.input_ids[0] == tokenizer.bos_token_id and chosen.input_ids[-1] == tokenizer.eos_token_id
    assert rejected.input_ids[-1] == tokenizer.eos_token_id
    assert PairTokenizer(tokenizer, 128, "drop")([pair(record)])[0].dropped


@pytest.mark.parametrize("data, reason", [
    ({"conversations": [{"from": "human", "value": "hi"}], "chosen": "a string", "rejected": {"from": "gpt", "value": "x"}},
     "field 'chosen' is str"),
    ({"instruction": "x", "chosen": "", "rejected": "y"}, "empty response"),
    ({"chosen": "no transcript", "rejected": "no transcript"}, "not an HH-RLHF transcript"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "c"}]}, "do not share their prompt"),
    ({"instruction": "x", "output": "y"}, "not a preference record"),
])
def test_bad_records_are_refused_in_one_line(data, reason):
    with pytest.raises(DataError, match=reason) as error:
        pair(data)
    assert str(error.value).startswith("f.json:1: ")


def test_the_token_cache_stores_a_pair_per_row(tokenizer, tmp_path):
    from data.collators import PreferenceCollator
    from data.datasets import PreferenceDataset
    dataset = PreferenceDataset({"main": {"files": str(REPO / "data" / "samples" / "dpo_zh_en_dev.json")}}, tokenizer,
                                max_seq_length=256, cache_dir=str(tmp_path))
    assert len(dataset) == 8 and all(len(dataset[i]["seq_lens"]) == 2 for i in range(8))
    reopened = PreferenceDataset({"main": {"files": str(REPO / "data" / "samples" / "dpo_zh_en_dev.json")}}, tokenizer,
                                 max_seq_length=256, cache_dir=str(tmp_path))
    assert not reopened.report["sources"]["main"]["cache_built_now"] and reopened[3] == {**dataset[3]}
    batch = PreferenceCollator(tokenizer)([dataset[0], dataset[1]])
    assert batch["input_ids"].shape[0] == 4 and int(batch["num_samples"]) == 2
    chosen_length = dataset[1]["seq_lens"][0]
    assert batch["input_ids"][1, :chosen_length].tolist() == dataset[1]["input_ids"][:chosen_length]


def test_a_pair_objective_refuses_batches_that_are_not_pairs(tokenizer):
    from data.collators import PaddingCollator
    from general_util.errors import ConfigError
    from modules.preference import DPO
    batch = PaddingCollator(tokenizer)([{"input_ids": [1, 5, 6], "labels": [-100, 5, 6], "index": 0},
                                        {"input_ids": [1, 7], "labels": [-100, 7], "index": 1}])
    with pytest.raises(ConfigError, match="PreferenceCollator"):
        DPO().normalisers(batch)


def test_llama_factory_declares_these_files_with_the_columns_we_recognise():
    """dataset_info.json (hiyouga/LLaMA-Factory@ff6d4d1) declares its dpo demo files as sharegpt ranking data whose
    columns are the field names data/preference.py recognises without a mapping."""
    info = json.loads((FIXTURES / "dataset_info.json").read_text())
    for name in ("dpo_en_demo", "dpo_zh_demo"):
        entry = info[name]
        assert entry["ranking"] is True and entry["formatting"] == "sharegpt"
        assert entry["columns"] == {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
        records = json.loads((FIXTURES / entry["file_name"]).read_text())
        assert all(set(r) == set(entry["columns"].values()) for r in records)


def kto(data, template="en"):
    from data.preference import to_kto
    return to_kto(Record(data, "f.json", 1), get_template(template))[0]


def test_kto_records_of_llama_factory_and_trl_become_labelled_examples_with_exact_masks(tokenizer):
    """kto_en_demo.json (hiyouga/LLaMA-Factory@ff6d4d1: messages + boolean label; its dataset_info entry names the
    label column kto_tag) and TRL's unpaired layout (prompt, completion, label)."""
    from data.preference import KtoTokenizer
    info = json.loads((FIXTURES / "dataset_info.json").read_text())["kto_en_demo"]
    assert info["formatting"] == "sharegpt" and info["columns"] == {"messages": "messages", "kto_tag": "label"}
    records = json.loads((FIXTURES / "kto_en_demo.json").read_text())
    assert {r["label"] for r in records} == {True, False}
    for template in ("en", "zh"):
        items = [kto(r, template) for r in records]
        assert [item.label for item in items] == [r["label"] for r in records]
        for result, record in zip(KtoTokenizer(tokenizer, 1 << 16)(items), records):
            (segment,) = result.segments
            assert result.label == record["label"] and not result.truncated
            # canonical tokens, the last assistant turn alone is scored
            assert decoded(tokenizer, segment, True).strip() == (record["messages"][-1]["content"] + "</s>").strip()
    trl = kto({"prompt": "What is 2+2?", "completion": "5", "label": False})
    assert not trl.label and "What is 2+2?" in trl.example.pieces[0][0] and trl.example.pieces[-1][0].startswith("5")
    messages = kto({"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}],
                    "kto_tag": True})
    assert messages.label and messages.example.pieces[-1][0].startswith("Hey")


def test_kto_completions_under_a_chat_template_have_exact_masks():
    from data.preference import KtoTokenizer
    from tests.tokenizer_kinds import tokenizer as tokenizer_of_kind
    chat = tokenizer_of_kind("llama3")  # Meta-Llama-3-8B-Instruct's chat template (tests/tokenizer_kinds.py)
    record = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."},
                           {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Blue."}],
              "kto_tag": False}
    result = KtoTokenizer(chat, 512)([kto(record, "chat")])[0]
    (segment,) = result.segments
    assert result.label is False and decoded(chat, segment, True) == "Blue.<|eot_id|>"  # earlier turns are context


@pytest.mark.parametrize("data, reason", [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "label": "yes"},
     "field 'label' is str"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "not a KTO record"),
    ({"prompt": "p", "completion": "", "label": True}, "empty response"),
])
def test_bad_kto_records_are_refused_in_one_line(data, reason):
    with pytest.raises(DataError, match=reason) as error:
        kto(data)
    assert str(error.value).startswith("f.json:1: ")


def test_the_token_cache_stores_the_kto_label_with_the_row_and_the_collator_mismatches_completions(tokenizer, tmp_path):
    from data.collators import KtoCollator
    from data.datasets import KtoDataset, TokenizedDataset
    sample = str(REPO / "data" / "samples" / "kto_en_train.json")
    dataset = KtoDataset({"main": {"files": sample}}, tokenizer, template="en", max_seq_length=256,
                         cache_dir=str(tmp_path))
    records = json.loads((REPO / "data" / "samples" / "kto_en_train.json").read_text())
    assert len(dataset) == len(records) == 32
    assert [dataset[i]["label"] for i in range(32)] == [r["label"] for r in records]
    reopened = KtoDataset({"main": {"files": sample}}, tokenizer, template="en", max_seq_length=256,
                          cache_dir=str(tmp_path))
    assert not reopened.report["sources"]["main"]["cache_built_now"] and reopened[5] == dataset[5]
    rows = [dataset[i] for i in range(3)]
    batch = KtoCollator(tokenizer)(rows)
    assert batch["kto_label"].tolist() == [r["label"] for r in records[:3]] and int(batch["num_samples"]) == 3
    longest = max(len(row["input_ids"]) for row in rows)
    cut = 0
    for i, row in enumerate(rows):
        start = [k for k, label in enumerate(row["labels"]) if label != -100][0]
        previous = rows[i - 1]
        other = [t for t, label in zip(previous["input_ids"], previous["labels"]) if label != -100]
        other = other[:longest - start]  # a mismatched row is no longer than the micro-batch's longest row
        cut += len(other) < len([t for t in previous["labels"] if t != -100])
        kl_ids = batch["kl_input_ids"][i].tolist()[:start + len(other)]
        assert kl_ids == row["input_ids"][:start] + other  # row i's prompt + row i-1's completion
        assert [t for t in batch["kl_labels"][i].tolist() if t != -100] == other
    assert cut >= 1 and batch["kl_input_ids"].shape[1] <= batch["input_ids"].shape[1]
    # the SFT cache of the same file is another cache and carries no label (its key is unchanged: kind sft)
    sft = TokenizedDataset({"main": {"files": sample}}, tokenizer, template="en", max_seq_length=256,
                           cache_dir=str(tmp_path))
    assert "label" not in sft[0] and sft.report["sources"]["main"]["cache_built_now"]


def test_the_kto_objective_refuses_batches_without_labels_or_with_one_example(tokenizer):
    from data.collators import KtoCollator, PreferenceCollator
    from general_util.errors import ConfigError
    from modules.preference import KTO
    rows = [{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 7], "seq_lens": [4], "index": 0, "label": True},
            {"input_ids": [1, 8, 9], "labels": [-100, -100, 9], "seq_lens": [3], "index": 1, "label": False}]
    assert KTO().normalisers(KtoCollator(tokenizer)(rows)).tolist() == [2.0]
    with pytest.raises(ConfigError, match="per_gpu_train_batch_size"):
        KTO().normalisers(KtoCollator(tokenizer)(rows[:1]))
    pair = {"input_ids": [1, 5, 6, 1, 8], "labels": [-100, 5, 6, -100, 8], "seq_lens": [3, 2], "index": 0}
    with pytest.raises(ConfigError, match="KtoCollator"):
        KTO().normalisers(PreferenceCollator(tokenizer)([pair]))
    with pytest.raises(ConfigError, match="precomputed"):
        KTO(reference="precomputed")


def test_llama_factory_ranking_entries_give_the_pairs_of_their_files(tokenizer, tmp_path):
    """`{dataset: <entry>}` sources of a dataset_info.json (hiyouga/LLaMA-Factory@ff6d4d1's own entries for its dpo
    demos) build the same rows as the files read directly; an alpaca ranking entry whose columns rename the fields
    (as `orca_pairs`: prompt → question) builds the rows of the pairs LLaMA-Factory's converter makes of its records
    (one user turn, then the chosen or the rejected assistant turn), written out here in its sharegpt layout."""
    from data.datasets import PreferenceDataset

    def rows(sources, **settings):
        dataset = PreferenceDataset(sources, tokenizer, max_seq_length=256, cache_dir=str(tmp_path), **settings)
        return [(dataset[i]["input_ids"], dataset[i]["labels"], dataset[i]["seq_lens"]) for i in range(len(dataset))]

    for name in ("dpo_en_demo", "dpo_zh_demo"):
        listed = rows({"lf": {"dataset": name}}, dataset_info=str(FIXTURES / "dataset_info.json"))
        assert listed and listed == rows({"direct": {"files": str(FIXTURES / f"{name}.json")}})
    records = [{"question": f"问题 {i}：一加{i}等于几？", "good": f"{i + 1}", "bad": f"{i + 2}"} for i in range(4)]
    (tmp_path / "renamed.json").write_text(json.dumps(records, ensure_ascii=False))
    (tmp_path / "converted.json").write_text(json.dumps(
        [{"conversations": [{"from": "human", "value": r["question"]}], "chosen": {"from": "gpt", "value": r["good"]},
          "rejected": {"from": "gpt", "value": r["bad"]}} for r in records], ensure_ascii=False))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"pairs": {
        "file_name": "renamed.json", "ranking": True,
        "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}}}))
    assert rows({"lf": {"dataset": "pairs"}}, dataset_info=str(tmp_path / "dataset_info.json")) == \
        rows({"direct": {"files": str(tmp_path / "converted.json")}})


def test_ranking_entries_and_their_records_are_checked_in_one_line(tokenizer, tmp_path):
    from data.datasets import TokenizedDataset
    from data.llamafactory import load_entry
    from data.formats import RecordOptions
    from general_util.errors import ConfigError
    with pytest.raises(ConfigError, match=r"dataset=dpo_en_demo: a ranking entry \(preference pairs\)"):
        TokenizedDataset({"lf": {"dataset": "dpo_en_demo"}}, tokenizer, cache_dir=str(tmp_path),
                         dataset_info=str(FIXTURES / "dataset_info.json"))
    layout = load_entry(FIXTURES / "dataset_info.json", "dpo_en_demo")["layout"]
    ends_answered = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
                     "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}
    with pytest.raises(DataError, match="a ranking conversation ends with a user turn"):
        to_pair(Record(ends_answered, "f.json", 1), get_template("zh"), RecordOptions(layout=layout))
    user_side = {"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "human", "value": "a"},
                 "rejected": {"from": "gpt", "value": "b"}}
    with pytest.raises(DataError, match="'chosen' is not an assistant message"):
        to_pair(Record(user_side, "f.json", 1), get_template("zh"), RecordOptions(layout=layout))
