"""Benchmark readers on the bundled samples, their one-line errors on bad input, and the prompt builder."""
import csv
import json
from pathlib import Path

import pytest

from data.benchmarks import (C3Reader, LogiQAReader, MMLUReader, MMLU_CATEGORIES, MultipleChoiceItem,
                             MultipleChoicePrompt, ReClorReader)
from data.records import DataError

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


# ---- bundled samples --------------------------------------------------------------------------------
@pytest.mark.parametrize("language, file_name, id_field", [("zh", "{split}_zh.txt", "example_id"),
                                                           ("en", "{split}.txt", "id")])
def test_logiqa_sample(language, file_name, id_field):
    counts = {}
    for split in ("train", "dev", "test"):
        items = LogiQAReader("data/samples/logiqa_v2", language, split).items()
        text = (SAMPLES / "logiqa_v2" / file_name.format(split=split)).read_text(encoding="utf-8")
        assert not text.endswith("\n")  # as the release: no newline after the last line
        rows = [json.loads(line) for line in text.splitlines()]
        assert [i.gold for i in items] == [r["answer"] for r in rows]
        assert [i.id.split("-line")[0] for i in items] == [str(r[id_field]) for r in rows]
        assert all(len(i.options) == 4 and i.passage and i.question for i in items)
        counts[split] = len(items)
    assert counts == {"train": 12, "dev": 15, "test": 11}
    item = LogiQAReader(SAMPLES / "logiqa_v2", language).items()[2]
    assert item.location == f"{SAMPLES / 'logiqa_v2' / file_name.format(split='dev')} (line 3)"


def test_logiqa_sample_zh_options_lose_their_own_letters():
    rows = [json.loads(line) for line in (SAMPLES / "logiqa_v2" / "dev_zh.txt").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["options"][0].startswith("A．") and rows[0]["options"][1].startswith("B.")
    first, second = LogiQAReader("data/samples/logiqa_v2", "zh").items()[:2]
    assert list(first.options) == [o[2:] for o in rows[0]["options"]] and list(second.options) == rows[1]["options"]
    as_published = LogiQAReader("data/samples/logiqa_v2", "zh", clean_options=False).items()[0]
    assert list(as_published.options) == rows[0]["options"]


def test_logiqa_sample_en_repeated_id_keeps_items_apart(caplog):
    items = LogiQAReader("data/samples/logiqa_v2", "en", "test").items()
    assert items[7].id == f"{items[3].id}-line8" and items[7].question
    assert "1 id(s) repeat for different questions" in caplog.text


def test_relative_data_dir_resolves_against_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(LogiQAReader("data/samples/logiqa_v2", "en").items()) == 15


@pytest.mark.parametrize("subset, count", [("d", 11), ("m", 10)])
def test_c3_sample_answer_text_becomes_an_index(subset, count):
    assert [len(C3Reader("data/samples/c3", subset, split).items()) for split in ("train", "test")] == \
        ([6, 5] if subset == "d" else [5, 5])  # c3-<subset>-{train,test}.json too, as the release
    items = C3Reader("data/samples/c3", subset).items()
    documents = json.loads((SAMPLES / "c3" / f"c3-{subset}-dev.json").read_text())
    questions = [(doc[2], q) for doc in documents for q in doc[1]]
    assert len(items) == count == len(questions)
    for item, (doc_id, question) in zip(items, questions):
        assert item.options[item.gold] == question["answer"]
        assert item.id.startswith(f"{doc_id}-")
        assert 2 <= len(item.options) <= 4
    assert len({i.id for i in items}) == count
    assert {len(i.options) for i in items} >= {2, 3}  # the sample mixes choice counts


def test_c3_document_with_two_questions_gives_two_items():
    first, second = C3Reader("data/samples/c3", "d").items()[:2]
    assert (first.id, second.id) == ("d1-1-0", "d1-1-1")
    assert first.passage == second.passage and "\n" in first.passage
    assert second.position == "record 0, question 1"


def test_reclor_sample_and_unlabelled_test_split():
    val = ReClorReader("data/samples/reclor", "val").items()
    assert len(val) == 11 and all(i.gold in range(4) for i in val)
    rows = json.loads((SAMPLES / "reclor" / "val.json").read_text())
    assert [i.gold for i in val] == [r["label"] for r in rows] and [i.id for i in val] == [r["id_string"] for r in rows]
    test = ReClorReader("data/samples/reclor", "test").items()
    assert len(test) == 9 and all(i.gold is None for i in test)
    assert len(ReClorReader("data/samples/reclor", "test").exemplars()) == 10  # from train


def test_mmlu_sample_subjects_categories_and_exemplars():
    reader = MMLUReader("data/samples/mmlu")
    assert reader.subject_names() == ["abstract_algebra", "high_school_geography", "nutrition", "philosophy"]
    items = reader.items()
    assert len(items) == 20
    assert all(i.category == MMLU_CATEGORIES[i.subject] for i in items)
    with open(SAMPLES / "mmlu" / "test" / "nutrition_test.csv", newline="") as f:
        rows = list(csv.reader(f))
    nutrition = [i for i in items if i.subject == "nutrition"]
    assert [i.gold for i in nutrition] == ["ABCD".index(r[5]) for r in rows]
    assert [list(i.options) for i in nutrition] == [r[1:5] for r in rows]
    exemplars = reader.exemplars()
    assert len(exemplars) == 20 and all("_dev.csv" in e.source for e in exemplars)
    only = MMLUReader("data/samples/mmlu", "val", subjects=["philosophy"]).items()
    assert len(only) == 3 and {i.subject for i in only} == {"philosophy"}


def test_mmlu_subject_without_category_is_still_read():
    items = MMLUReader("data/samples/mmlu", categories={"nutrition": "health"}).items()
    assert {i.category for i in items if i.subject == "nutrition"} == {"health"}
    assert {i.category for i in items if i.subject != "nutrition"} == {None}


# ---- bad input: one line naming file, line/record and reason ----------------------------------------
def assert_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def write_lines(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))


GOOD_LOGIQA = {"id": 1, "text": "t", "question": "q", "options": ["a", "b", "c", "d"], "answer": 1}


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "malformed JSON"),
    ({k: v for k, v in GOOD_LOGIQA.items() if k != "question"}, "missing field(s) question"),
    ({**GOOD_LOGIQA, "options": ["a", "b", "c"]}, "expected 4 options, got 3"),
    ({**GOOD_LOGIQA, "options": ["a", 2, "c", "d"]}, "options must be a list of strings"),
    ([1, 2], "expected a JSON object (LogiQA 2.0 records hold"),
    ({**GOOD_LOGIQA, "answer": 4}, "label must be an integer in [0, 4), got 4"),
    ({**GOOD_LOGIQA, "answer": True}, "got True"),
    ({**GOOD_LOGIQA, "answer": "B"}, "got 'B'"),
])
def test_logiqa_bad_record(tmp_path, bad, reason):
    write_lines(tmp_path / "dev_zh.txt", [GOOD_LOGIQA, bad])
    with pytest.raises(DataError) as excinfo:
        LogiQAReader(tmp_path, "zh").items()
    assert_error(excinfo, f"{tmp_path / 'dev_zh.txt'}:2: ", reason)


def test_logiqa_empty_option_left_out_and_missing_file(tmp_path, caplog):
    write_lines(tmp_path / "dev.txt", [GOOD_LOGIQA, {**GOOD_LOGIQA, "id": 2, "options": ["a", "", "c", "d"]}])
    assert [i.id for i in LogiQAReader(tmp_path, "en").items()] == ["1"]
    assert "left out 1 record(s) with an empty option, at line(s) 2" in caplog.text
    assert len(LogiQAReader(tmp_path, "en", clean_options=False).items()) == 2
    with pytest.raises(DataError) as excinfo:
        LogiQAReader(tmp_path, "en", "test").items()
    assert_error(excinfo, f"{tmp_path / 'test.txt'}: no such file; github.com/csitfun/LogiQA2.0 ships train.txt, "
                          "dev.txt, test.txt in logiqa/DATA/LOGIQA")
    with pytest.raises(DataError) as excinfo:
        LogiQAReader(tmp_path, "zh").items()
    assert_error(excinfo, "dev_zh.txt: no such file", "train_zh.txt, dev_zh.txt, test_zh.txt")


def c3_document(answer="好", choices=("好", "不好")):
    return [["男：你好吗？", "女：很好。"], [{"question": "女的怎么样？", "choice": list(choices), "answer": answer}], "d9-1"]


@pytest.mark.parametrize("documents, reason", [
    ([c3_document(), c3_document(answer="很好")], "record 1 (d9-1), question 0: answer '很好' is not among the choices ['好', '不好']"),
    ([c3_document(choices=("好",))], "record 0 (d9-1), question 0: expected 2–4 options, got 1"),
    ([c3_document(choices=("好", "a", "b", "c", "d"))], "expected 2–4 options, got 5"),
    ([[["line"], "not a list", "d1"]], "record 0: expected [[context lines], [questions], id]"),
    ([[["line"], [{"question": "q", "choice": ["a", "b"]}], "d1"]], "record 0 (d1), question 0: expected {question, choice, answer}"),
    ({"not": "a list"}, "expected a JSON list at the top level, got dict"),
])
def test_c3_bad_input(tmp_path, documents, reason):
    (tmp_path / "c3-d-dev.json").write_text(json.dumps(documents, ensure_ascii=False))
    with pytest.raises(DataError) as excinfo:
        C3Reader(tmp_path, "d").items()
    assert_error(excinfo, str(tmp_path / "c3-d-dev.json"), reason)


def test_c3_malformed_json_names_the_line(tmp_path):
    (tmp_path / "c3-m-dev.json").write_text('[\n["a"],\n oops]')
    with pytest.raises(DataError) as excinfo:
        C3Reader(tmp_path, "m").items()
    assert_error(excinfo, "c3-m-dev.json:3: malformed JSON")


GOOD_RECLOR = {"context": "c", "question": "q", "answers": ["a", "b", "c", "d"], "label": 0, "id_string": "val_0"}


@pytest.mark.parametrize("bad, reason", [
    ({k: v for k, v in GOOD_RECLOR.items() if k != "label"}, "record 1: missing field label (only the test split is unlabelled)"),
    ({**GOOD_RECLOR, "label": -1}, "record 1: label must be an integer in [0, 4), got -1"),
    ({k: v for k, v in GOOD_RECLOR.items() if k != "id_string"}, "record 1: missing field(s) id_string"),
    ({**GOOD_RECLOR, "answers": ["a", "b"]}, "record 1: expected 4 options, got 2"),
    (["not", "an", "object"], "record 1: expected a JSON object (ReClor records hold"),
])
def test_reclor_bad_record(tmp_path, bad, reason):
    (tmp_path / "val.json").write_text(json.dumps([{**GOOD_RECLOR, "id_string": "val_x"}, bad]))
    with pytest.raises(DataError) as excinfo:
        ReClorReader(tmp_path, "val").items()
    assert_error(excinfo, str(tmp_path / "val.json"), reason)


@pytest.mark.parametrize("rows, reason", [
    ("q,a,b,c,d,A\nq,a,b,c,d\n", ":2: expected 6 fields (question, A, B, C, D, answer), got 5"),
    ('q,a,b,c,d,A\n"multi\nline",a,b,c,d,A\nq,a,b,c,d,E\n', ":4: answer must be one of A, B, C, D, got 'E'"),
    ("q,a,,c,d,B\n", ":1: options must be a list of non-empty strings"),
])
def test_mmlu_bad_row(tmp_path, rows, reason):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "anatomy_test.csv").write_text(rows)
    with pytest.raises(DataError) as excinfo:
        MMLUReader(tmp_path).items()
    assert_error(excinfo, str(tmp_path / "test" / "anatomy_test.csv") + reason)


def test_mmlu_missing_split_and_subject(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError) as excinfo:
        MMLUReader(tmp_path).items()
    assert_error(excinfo, str(tmp_path / "test"), "no files named <subject>_test.csv")
    with pytest.raises(DataError) as excinfo:
        MMLUReader("data/samples/mmlu", subjects=["astronomy"]).items()
    assert_error(excinfo, "astronomy_test.csv: no such file")


# ---- prompts ----------------------------------------------------------------------------------------
def item(n: int, subject=None, source="dev.txt") -> MultipleChoiceItem:
    return MultipleChoiceItem(id=str(n), passage=f"passage {n}", question=f"question {n}?",
                              options=(f"a{n}", f"b{n}", f"c{n}", f"d{n}"), gold=n % 4, source=source,
                              position=f"line {n + 1}", subject=subject)


def test_zh_and_en_templates_letter_the_options():
    en = MultipleChoicePrompt("en").render([item(0)], [])[0]
    assert en == ("The following are multiple choice questions (with answers).\n\n"
                  "Passage: passage 0\nQuestion: question 0?\nA. a0\nB. b0\nC. c0\nD. d0\nAnswer:")
    zh = MultipleChoicePrompt("zh", instruction="").render([item(0)], [])[0]
    assert zh == "文章：passage 0\n问题：question 0?\nA. a0\nB. b0\nC. c0\nD. d0\n答案："
    assert MultipleChoicePrompt("en").continuations(item(0)) == [" a0", " b0", " c0", " d0"]
    assert MultipleChoicePrompt("en", answer_format="letter").continuations(item(0)) == [" A", " B", " C", " D"]


def test_exemplars_first_never_the_item_itself():
    pool = [item(n) for n in range(5)]
    prompt = MultipleChoicePrompt("en", num_shots=2, instruction="")
    first, third = prompt.render([pool[0], pool[2]], pool)
    # item 0 skips itself: exemplars 1 and 2, answered with their gold option's text
    assert first.split("\n\n")[:2] == [
        "Passage: passage 1\nQuestion: question 1?\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer: b1",
        "Passage: passage 2\nQuestion: question 2?\nA. a2\nB. b2\nC. c2\nD. d2\nAnswer: c2"]
    assert first.count("passage 0") == 1 and third.count("passage 2") == 1
    assert "passage 0" in third and "passage 1" in third


def test_random_exemplars_follow_the_seed_and_item_not_the_order():
    pool = [item(n) for n in range(12)]
    prompt = MultipleChoicePrompt("en", num_shots=3, shot_selection="random", seed=7)
    forward = prompt.render(pool, pool)
    backward = prompt.render(pool[::-1], pool)[::-1]
    assert forward == backward  # each item's exemplars do not depend on which others are rendered
    assert forward != MultipleChoicePrompt("en", num_shots=3, shot_selection="random", seed=8).render(pool, pool)
    for n, text in enumerate(forward):
        assert text.count(f"passage {n}\n") == 1  # never its own exemplar


def test_mmlu_exemplars_come_from_the_same_subject_and_name_it():
    pool = [item(n, "anatomy", "dev.csv") for n in range(3)] + [item(n, "virology", "dev.csv") for n in range(3, 8)]
    prompt = MultipleChoicePrompt("en", num_shots=2, answer_format="letter",
                                  instruction="The following are multiple choice questions (with answers) about {subject}.")
    text = prompt.render([item(9, "virology", "test.csv")], pool)[0]
    assert text.startswith("The following are multiple choice questions (with answers) about virology.\n\n")
    assert "passage 3" in text and "passage 4" in text and "passage 0" not in text
    assert "D. d3\nAnswer: D\n\n" in text  # letter answers in exemplars
    with pytest.raises(ValueError, match="num_shots=4 but only 3 labelled exemplars of subject anatomy"):
        MultipleChoicePrompt("en", num_shots=4).render([item(9, "anatomy", "test.csv")], pool)


def test_prompt_rejects_bad_settings():
    for kwargs in ({"language": "fr"}, {"shot_selection": "best"}, {"answer_format": "word"}, {"num_shots": -1}):
        with pytest.raises(ValueError):
            MultipleChoicePrompt(**kwargs)
