"""Each reader on a small fixture written byte for byte in its publisher's schema (file names, folders,
field names, label encoding, line ends, no newline at the end where the release has none), and the one-line
errors for what does not fit. The schemas were checked against:

    LogiQA 2.0  github.com/csitfun/LogiQA2.0 @955e1d3 logiqa/DATA/LOGIQA/{dev,test}{,_zh}.txt
    C3          github.com/nlpdata/c3 @1f41682 data/c3-{d,m}-{train,dev,test}.json
    ReClor      github.com/yuweihao/reclor @19b9d6c utils_multiple_choice.py (ReclorProcessor), README
    MMLU        github.com/hendrycks/test @4450500 evaluate.py (header=None, data/{dev,test}/<s>_<split>.csv)
    CMMLU       github.com/haonan-li/CMMLU @d6e7b71 data/{dev,test}/<subject>.csv, src/categories.py
    C-Eval      github.com/hkust-nlp/ceval @cba65ae subject_mapping.json, submission_example.json, README;
                the ceval-exam.zip CSVs as vendored in TsingmaoAI/MI-optimize @b147ba5
"""
import functools
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from data.benchmarks import (C3Reader, CEVAL_CATEGORIES, CEvalReader, CMMLU_CATEGORIES, CMMLUReader, LogiQAReader,
                             MMLU_CATEGORIES, MMLUReader, ReClorReader)
from data.benchmarks.ceval import submission
from data.benchmarks.cmmlu import CHINA_SPECIFIC, SUBJECTS as CMMLU_SUBJECTS
from data.benchmarks.ceval import SUBJECTS as CEVAL_SUBJECTS
from data.records import DataError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def raises(call, *fragments) -> str:
    with pytest.raises(DataError) as excinfo:
        call()
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- LogiQA 2.0 ---------------------------------------------------------------------------------------
LOGIQA_ZH = "\n".join([  # test_zh.txt: example_id first, no type, options partly lettered, no final newline
    '{"example_id": 12713, "answer": 3, "text": "调查发现养宠物的人往往更健康、更乐观。", "question": "由此，可以推断出以下哪项？ ", '
    '"options": ["养宠物会让人身心健康。", "身心健康的人才有精力养宠物。", "关爱动物让人身心更健康。", "养宠物的人身心更健康。"]}',
    '{"example_id": 14338, "answer": 1, "text": "甲比乙高，乙比丙高。", "question": "谁最矮？", '
    '"options": ["A.甲", "B.丙", "C．乙", "D、无法确定"]}',
    '{"example_id": 15001, "answer": 0, "text": "某地选民。", "question": "哪项最能削弱？", '
    '"options": ["", "交通死亡人数并没有异常高", "新限速更严格", "大多数司机遵守新限速"]}',
    '{"example_id": 15002, "answer": 2, "text": "字母被打乱的选项。", "question": "选哪个？", '
    '"options": ["A．F", "C．J", "B. G", "D. N"]}',
])
LOGIQA_EN = "\n".join([  # test.txt: id, answer, text, question, options, type; an id repeated; no final newline
    '{"id": 2920, "answer": 3, "text": "One seminar had 18 participants.", "question": "Which can be concluded?", '
    '"options": ["Some young teachers are not women", "Some young women are not teachers", "At least 11", '
    '"At least 13"], "type": {"Sufficient Conditional Reasoning": true}}',
    '{"id": 10654, "answer": 0, "text": "MetroBank made loans.", "question": "Which resolves it?", '
    '"options": ["a", "b", "B. t. toxins do not harm weeds.", "d"], "type": {"Categorical Reasoning": true}}',
    '{"id": 2920, "answer": 1, "text": "Another passage.", "question": "Which follows?", '
    '"options": ["w", "x", "y", "z"], "type": {"Conjunctive Reasoning": true, "Disjunctive Reasoning": true}}',
])


def test_logiqa_zh_official_schema(tmp_path, caplog):
    write(tmp_path / "test_zh.txt", LOGIQA_ZH)
    items = LogiQAReader(tmp_path, "zh", "test").items()
    assert [i.id for i in items] == ["12713", "14338", "15002"]  # 15001 has an empty option: left out
    assert "test_zh.txt: left out 1 record(s) with an empty option, at line(s) 3" in caplog.text
    assert [i.gold for i in items] == [3, 1, 2]
    assert items[0].options[3] == "养宠物的人身心更健康。" and items[0].question == "由此，可以推断出以下哪项？ "
    assert items[1].options == ("甲", "丙", "乙", "无法确定")  # their own letters dropped
    assert items[2].options == ("A．F", "C．J", "B. G", "D. N")  # letters shuffled: kept, the label counts positions
    assert items[2].position == "line 4"
    published = LogiQAReader(tmp_path, "zh", "test", clean_options=False).items()
    assert len(published) == 4 and published[1].options[0] == "A.甲" and published[2].options[0] == ""


def test_logiqa_zh_earlier_uploads_with_id_and_copies_without(tmp_path):
    write(tmp_path / "dev_zh.txt", '{"id": 9008, "answer": 0, "text": "t", "question": "q", "options": ["a", "b", "c", "d"]}\n'
                                   '{"answer": 1, "text": "t", "question": "q", "options": ["a", "b", "c", "d"]}\n')
    assert [i.id for i in LogiQAReader(tmp_path, "zh").items()] == ["9008", "dev_zh-2"]


def test_logiqa_en_official_schema(tmp_path):
    write(tmp_path / "test.txt", LOGIQA_EN)
    items = LogiQAReader(tmp_path, "en", "test").items()
    assert [i.id for i in items] == ["2920", "10654", "2920-line3"]
    assert [i.gold for i in items] == [3, 0, 1]
    assert items[1].options[2] == "B. t. toxins do not harm weeds."  # English options are never touched
    assert items[0].passage == "One seminar had 18 participants." and len({i.id for i in items}) == 3


def test_logiqa_names_the_release_layout(tmp_path):
    write(tmp_path / "test_en.txt", LOGIQA_EN)  # the name some copies use: still read when test.txt is absent
    assert len(LogiQAReader(tmp_path, "en", "test").items()) == 3
    raises(lambda: LogiQAReader(tmp_path, "en", "dev").items(), str(tmp_path / "dev.txt"), "no such file",
           "logiqa/DATA/LOGIQA")
    write(tmp_path / "dev_zh.txt", '{"example_id": 1, "answer": 4, "text": "t", "question": "q", "options": ["a", "b", "c", "d"]}')
    raises(lambda: LogiQAReader(tmp_path, "zh").items(), f"{tmp_path / 'dev_zh.txt'}:1: label must be an integer in [0, 4)")
    write(tmp_path / "dev_zh.txt", '{"example_id": 1, "label": 0, "context": "t", "question": "q", "answers": ["a"]}')
    raises(lambda: LogiQAReader(tmp_path, "zh").items(), "dev_zh.txt:1: missing field(s) text, options, answer",
           "LogiQA 2.0 records hold example_id, text, question, options, answer")


# ---- C3 -------------------------------------------------------------------------------------------------
C3_DEV = [
    [["男：听说你们公司要派你去南方工作?", "女：是呀，虽说那边环境好，待遇也不错，可我还是觉得在家里最好。"],
     [{"question": "他们在谈论什么?", "choice": ["旅行", "坏境", "工作", "家庭"], "answer": "工作"}], "47-275"],
    [["女：方方怎么样？", "男：她做事很马虎。"],
     [{"question": "男的认为方方是怎么样的人?", "choice": ["可爱", "认真", "马虎", "认真"], "answer": "马虎"},
      {"question": "方方是谁?", "choice": ["女的", "同事", "学生"], "answer": "同事"}], "12-3"],
]


def test_c3_official_schema(tmp_path):
    write(tmp_path / "c3-d-dev.json", json.dumps(C3_DEV, ensure_ascii=False, indent=1))  # as released: indent 1, no newline
    items = C3Reader(tmp_path, "d", "dev").items()
    assert [i.id for i in items] == ["47-275-0", "12-3-0", "12-3-1"]
    assert [i.gold for i in items] == [2, 2, 1] and [len(i.options) for i in items] == [4, 4, 3]
    assert items[1].options == ("可爱", "认真", "马虎", "认真")  # a repeated choice text, as in the release
    raises(lambda: C3Reader(tmp_path, "m", "dev").items(), "c3-m-dev.json: no such file",
           "github.com/nlpdata/c3 ships c3-{d,m}-{train,dev,test}.json")


# ---- ReClor ---------------------------------------------------------------------------------------------
def reclor_record(split: str, i: int, label: int | None = 0) -> dict:
    row = {"context": "In rheumatoid arthritis, the body' s immune system misfunctions.", "question": "Which follows?",
           "answers": ["a", "b", "c", "d"], "label": label, "id_string": f"{split}_{i}"}
    if label is None:
        del row["label"]
    return row


def test_reclor_official_schema(tmp_path):
    write(tmp_path / "val.json", json.dumps([reclor_record("val", 0, 1), reclor_record("val", 1, 3)]))
    write(tmp_path / "test.json", json.dumps([reclor_record("test", 0, None), reclor_record("test", 1, None)]))
    write(tmp_path / "train.json", json.dumps([reclor_record("train", 0, 2)]))
    val = ReClorReader(tmp_path, "val").items()
    assert [(i.id, i.gold) for i in val] == [("val_0", 1), ("val_1", 3)] and val[0].options == ("a", "b", "c", "d")
    test = ReClorReader(tmp_path, "test").items()
    assert [(i.id, i.gold) for i in test] == [("test_0", None), ("test_1", None)]
    write(tmp_path / "test.json", json.dumps([reclor_record("test", 0, -1)]))  # copies that write label -1
    assert ReClorReader(tmp_path, "test").items()[0].gold is None
    raises(lambda: ReClorReader(tmp_path / "nowhere", "val").items(), "val.json: no such file", "reclor_data.zip")
    write(tmp_path / "val.json", json.dumps([{"context": "c", "question": "q", "options": ["a"], "label": 0}]))
    raises(lambda: ReClorReader(tmp_path, "val").items(), "val.json: record 0: missing field(s) answers, id_string",
           "ReClor records hold context, question, answers, label, id_string")


# ---- MMLU -----------------------------------------------------------------------------------------------
MMLU_DEV = ("Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.,0,1,2,3,B\n"
            '"Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are '
            'subgroups of G then HK is a subgroup of G.","True, True","False, False","True, False","False, True",B\n')
MMLU_TEST = ('"Which of the following\nspans two lines?",one,two,three,four,D\n'
             "Find the characteristic of the ring 2Z.,0,3,12,30,A\n")


def test_mmlu_official_schema(tmp_path):
    data = tmp_path / "data"  # data.tar unpacks to data/{dev,val,test}/
    write(data / "dev" / "abstract_algebra_dev.csv", MMLU_DEV)
    write(data / "test" / "abstract_algebra_test.csv", MMLU_TEST)
    write(data / "dev" / "virology_dev.csv", MMLU_DEV)
    write(data / "test" / "virology_test.csv", MMLU_TEST.rstrip("\n"))  # a last line without newline
    reader = MMLUReader(data)
    items = reader.items()
    assert reader.subject_names() == ["abstract_algebra", "virology"] and len(items) == 4
    assert [i.gold for i in items] == [3, 0, 3, 0] and items[0].question == "Which of the following\nspans two lines?"
    assert items[1].options == ("0", "3", "12", "30") and items[1].position == "line 3"
    assert [i.category for i in items] == ["STEM", "STEM", "other", "other"]
    exemplars = reader.exemplars()
    assert exemplars[1].options == ("True, True", "False, False", "True, False", "False, True") and exemplars[1].gold == 1
    assert len(MMLU_CATEGORIES) == 57 and set(MMLU_CATEGORIES.values()) == {"STEM", "humanities", "social_sciences", "other"}


def test_mmlu_unknown_layouts(tmp_path):
    write(tmp_path / "test" / "anatomy_test.csv", "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,1\n")
    raises(lambda: MMLUReader(tmp_path).items(), "anatomy_test.csv:1: a header row (question,choice0",
           "the MMLU release has rows question,A,B,C,D,<answer letter> without a header")
    raises(lambda: MMLUReader(tmp_path / "elsewhere").items(), "no files named <subject>_test.csv", "data.tar")


# ---- CMMLU ----------------------------------------------------------------------------------------------
CMMLU_DEV = (",Question,A,B,C,D,Answer\n"
             "0,肉牛屠宰后，胴体的哪个部位肉质较好,胸,腹,大腿,小腿,C\n"
             "1,下列鸭品种中，产蛋量最高的品种是,高邮鸭,北京鸭,樱桃谷鸭,绍鸭,D\n")
CMMLU_TEST = (",Question,A,B,C,D,Answer\n"
              "0,在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是,农业生产工具,土地,劳动力,资金,B\n"
              '1,"农业税的计税标准，按（）来进行",当年产量,三年平均产量,常年产量,去年产量,C\n'
              "2,在孵化室温度为24～26°C的条件下，立体孵化器孵化鸡蛋的最适温度为,36°C,37.8°C,36.5°C,37°C,B\n")


def test_cmmlu_official_schema(tmp_path):
    data = tmp_path / "data"
    write(data / "dev" / "agronomy.csv", CMMLU_DEV)
    write(data / "test" / "agronomy.csv", CMMLU_TEST)
    write(data / "dev" / "chinese_history.csv", CMMLU_DEV)
    write(data / "test" / "chinese_history.csv", CMMLU_TEST)
    reader = CMMLUReader(data)
    items = reader.items()
    assert reader.subject_names() == ["agronomy", "chinese_history"] and len(items) == 6
    assert [i.id for i in items[:3]] == ["agronomy-0", "agronomy-1", "agronomy-2"] and [i.gold for i in items[:3]] == [1, 2, 1]
    assert items[0].options == ("农业生产工具", "土地", "劳动力", "资金") and items[1].question == "农业税的计税标准，按（）来进行"
    assert (items[0].category, items[0].subject_name) == ("other", "农学")
    assert (items[3].category, items[3].subject_name) == ("humanities", "中国历史") and "chinese_history" in CHINA_SPECIFIC
    assert [e.gold for e in reader.exemplars()] == [2, 3, 2, 3]
    assert len(CMMLU_SUBJECTS) == 67 and set(CMMLU_CATEGORIES.values()) == {"STEM", "humanities", "social_sciences", "other"}


@pytest.mark.parametrize("text, reason", [
    ("Question,A,B,C,D,Answer\nq,a,b,c,d,A\n", ":1: expected the CMMLU header ',Question,A,B,C,D,Answer', got 'Question,A,B,C,D,Answer'"),
    (",Question,A,B,C,D,Answer\n0,q,a,b,c,d,E\n", ":2: Answer must be one of A, B, C, D, got 'E'"),
    (",Question,A,B,C,D,Answer\n0,q,a,b,c,A\n", ":2: expected 7 fields (index, Question, A, B, C, D, Answer), got 6"),
    (",Question,A,B,C,D,Answer\n", ": no questions below the header"),
])
def test_cmmlu_bad_input(tmp_path, text, reason):
    write(tmp_path / "test" / "anatomy.csv", text)
    raises(lambda: CMMLUReader(tmp_path).items(), str(tmp_path / "test" / "anatomy.csv") + reason)


# ---- C-Eval ---------------------------------------------------------------------------------------------
CEVAL_DEV = ("id,question,A,B,C,D,answer,explanation\n"
             '0,下列设备属于资源子网的是____。,计算机软件,网桥,交换机,路由器,A,"1. 首先，资源子网是指提供共享资源的网络。\n'
             '2. 其次，计算机软件可以提供共享资源的功能。"\n'
             "1,滑动窗口的作用是____。,流量控制,拥塞控制,路由控制,差错控制,A,1. 滑动窗口是一种流量控制机制。\n")
CEVAL_VAL = ("id,question,A,B,C,D,answer\n"
             "0,使用位填充方法，以01111110为位首flag，数据为011011111111111111110010，求问传送时要添加几个0____,1,2,3,4,C\n"
             "1,在802.3标准中，发送帧之前需要____,等待冲突,等待令牌,监听介质,接受一个帧,C\n")
CEVAL_TEST = ("id,question,A,B,C,D\n"
              "0,计算机网络的资源主要是指____。,服务器、路由器、通信线路与用户计算机,计算机操作系统、数据库与应用软件,计算机硬件、软件与数据,"
              "Web服务器、数据库服务器与文件服务器\n"
              "1,____是传输层数据交换的基本单位。,位,分组,帧,报文段\n"
              "2,TCP使用____次握手协议建立连接。,一,二,三,四\n")


def ceval_folder(root: Path) -> Path:
    for subject in ("computer_network", "logic"):
        write(root / "dev" / f"{subject}_dev.csv", CEVAL_DEV)
        write(root / "val" / f"{subject}_val.csv", CEVAL_VAL)
        write(root / "test" / f"{subject}_test.csv", CEVAL_TEST)
    return root


def test_ceval_official_schema(tmp_path):
    root = ceval_folder(tmp_path / "ceval-exam")
    val = CEvalReader(root).items()
    assert [i.id for i in val] == ["computer_network-0", "computer_network-1", "logic-0", "logic-1"]
    assert [i.gold for i in val] == [2, 2, 2, 2] and val[1].options == ("等待冲突", "等待令牌", "监听介质", "接受一个帧")
    assert [(i.category, i.subject_name) for i in val[1:3]] == [("STEM", "计算机网络"), ("humanities", "逻辑学")]
    dev = CEvalReader(root).exemplars()
    assert len(dev) == 4 and dev[0].gold == 0 and dev[1].position == "line 4"  # the explanation spans lines 2–3
    test = CEvalReader(root, "test").items()
    assert len(test) == 6 and all(i.gold is None for i in test) and test[5].options == ("一", "二", "三", "四")
    assert len(CEVAL_SUBJECTS) == 52 and set(CEVAL_CATEGORIES.values()) == {"STEM", "humanities", "social_sciences", "other"}


def test_ceval_submission_is_the_leaderboard_json(tmp_path):
    test = CEvalReader(ceval_folder(tmp_path), "test").items()
    predictions = [{"id": i.id, "subject": i.subject, "gold": None, "prediction": n % 4 if n != 4 else None}
                   for n, i in enumerate(test)]
    assert submission(predictions) == {"computer_network": {"0": "A", "1": "B", "2": "C"},
                                       "logic": {"0": "D", "1": "", "2": "B"}}
    path = CEvalReader.write_submission(tmp_path / "out", predictions)
    assert path == tmp_path / "out" / "ceval_submission.json"
    assert json.loads(path.read_text(encoding="utf-8"))["logic"] == {"0": "D", "1": "", "2": "B"}


@pytest.mark.parametrize("split, text, reason", [
    ("val", "id,question,A,B,C,D\n0,q,a,b,c,d\n", ":1: expected a C-Eval header starting 'id,question,A,B,C,D,answer', "
                                                 "got 'id,question,A,B,C,D'"),
    ("val", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,F\n", ":2: answer must be one of A, B, C, D, got 'F'"),
    ("val", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,\n", ":2: answer must be one of A, B, C, D, got ''"),
    ("test", "question,A,B,C,D\nq,a,b,c,d\n", ":1: expected a C-Eval header starting 'id,question,A,B,C,D', got "
                                              "'question,A,B,C,D' (test/ may leave out answer)"),
    ("test", "id,question,A,B,C,D\n0,q,a,b,c,d\n0,r,a,b,c,d\n", ":3: duplicate id '0'"),
    ("dev", "id,question,A,B,C,D,answer,explanation\n0,q,a,b,c,d,A\n", ":2: expected 8 fields (id,question,A,B,C,D,"
                                                                      "answer,explanation), got 7"),
])
def test_ceval_bad_input(tmp_path, split, text, reason):
    write(tmp_path / split / f"logic_{split}.csv", text)
    raises(lambda: CEvalReader(tmp_path, split).items(), str(tmp_path / split / f"logic_{split}.csv") + reason)


def test_ceval_exemplars_need_labels(tmp_path):
    with pytest.raises(ValueError, match="exemplar_split='test' has no labels"):
        CEvalReader(tmp_path, exemplar_split="test")


# ---- the bundled samples through the shipped config nodes -----------------------------------------------
def test_cmmlu_and_ceval_nodes_read_the_bundled_samples(tmp_path):
    (tmp_path / "task.yaml").write_text("defaults:\n  - eval@evaluators.cmmlu: cmmlu\n  - eval@evaluators.ceval: ceval\n"
                                        "  - _self_\nseed: 42\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose("task")
    assert cfg.evaluators.cmmlu.data_dir == "data/samples/cmmlu" and cfg.evaluators.ceval.data_dir == "data/samples/ceval"
    evaluators = instantiate(cfg.evaluators)
    cmmlu, ceval = evaluators["cmmlu"], evaluators["ceval"]
    assert len(cmmlu.items) == 24 and {i.subject for i in cmmlu.items} == {
        "chinese_history", "elementary_mathematics", "high_school_geography", "nutrition"}
    assert {i.category for i in cmmlu.items} == {"STEM", "humanities", "social_sciences", "other"}
    assert len(ceval.items) == 16 and all(i.gold is not None for i in ceval.items)
    assert cmmlu.prompts[0].count("答案：") == 6 and ceval.prompts[0].count("答案：") == 6  # 5 shots + the item
    test = CEvalReader(REPO / "data/samples/ceval", "test").items()
    assert len(test) == 12 and all(i.gold is None for i in test)


def test_ceval_test_split_through_the_evaluator_writes_the_submission_with_chinese_subjects(tmp_path):
    """C-Eval's unlabelled test split, end to end on the tiny model: its instruction names each subject as
    C-Eval does (in Chinese), and the evaluator writes the leaderboard's ceval_submission.json."""
    import json as json_module

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data.benchmarks import MultipleChoicePrompt
    from modules.loss_impl import LossSettings
    from post_processors.multiple_choice import MultipleChoiceEvaluator
    prompt = MultipleChoicePrompt("zh", num_shots=2, answer_format="letter",
                                  instruction="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。")
    evaluator = MultipleChoiceEvaluator("ceval", functools.partial(CEvalReader, split="test"), prompt,
                                        max_seq_length=1024, data_dir="data/samples/ceval")
    assert all("{subject}" not in p and "以下是中国关于" in p for p in evaluator.prompts)
    assert any("高中地理" in p for p in evaluator.prompts) and not any("high school geography" in p for p in evaluator.prompts)
    model = AutoModelForCausalLM.from_pretrained("models/tiny_llama").eval()
    metrics = evaluator(model, AutoTokenizer.from_pretrained("models/tiny_llama"), tmp_path, LossSettings())
    assert metrics["labelled"] == 0 and metrics["n"] == len(evaluator.items)
    submission = json_module.loads((tmp_path / "ceval_submission.json").read_text(encoding="utf-8"))
    assert sum(len(answers) for answers in submission.values()) == len(evaluator.items)
    assert all(letter in "ABCD" for answers in submission.values() for letter in answers.values())
