"""The original PandaLLM evaluation protocol under the original config names: the prompt byte for byte as
../shared/SEED_RECIPES.md states its rule (and dandelionsllm/pandallm's data/reclor_prompt.py builds it), the
answer read as its post_processors/reclor.py reads it, and a 2-rank run writing one prediction per item."""
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from data.benchmarks.items import MultipleChoiceItem
from post_processors.answer_extraction import extract_choice
from tests.trainer_runs import REPO, run_trainer

ITEM = MultipleChoiceItem(id="7", passage="甲比乙高，乙比丙高。", question="谁最矮？", options=("甲", "乙", "丙", "无法确定"),
                          gold=2, source="test_zh.txt", position="line 1")
SHOT = MultipleChoiceItem(id="1", passage="所有猫都怕水。", question="小花是猫，可推出？", options=("小花怕水", "小花不怕水"),
                          gold=0, source="train_zh.txt", position="line 1")


def options_block(options) -> str:  # one line `<letter>: <text>\n` per option
    return "".join(f"{letter}: {text}\n" for letter, text in zip("ABCDE", options))


def zh_rule(item, shots=(), instruction="阅读下面的文章并从选项中选择的答案回答问题："):
    exemplars = [f"文章：\n{s.passage}\n\n问题：\n{s.question}\n\n选项：\n{options_block(s.options)}\n\n答案是 {'ABCD'[s.gold]}"
                 for s in shots]
    body = f"{item.passage}\n\n问题：\n{item.question}\n\n选项：\n{options_block(item.options)}\n\n本题的答案是："
    return instruction + "\n\n" + "\n\n".join(exemplars) + "\n\n" + body


def en_rule(item, suffix, instruction="Answer the following question with the given context:"):
    body = f"Context:\n{item.passage}\n\nQuestion:\n{item.question}\n\nOptions:\n{options_block(item.options)}\n\n{suffix}"
    return instruction + "\n\n" + "" + "\n\n" + body


def evaluator_node(folder: str, name: str, key: str, overrides=()):
    with initialize_config_dir(config_dir=str(REPO / folder), version_base="1.3"):
        cfg = compose(config_name=name, overrides=["model_name_or_path=models/tiny_llama", *overrides])
    return cfg.evaluators[key]


def dream_reader(path):
    """The original `data.readers.DreamReader` (dandelionsllm/pandallm@4a47ecd): a dialogue's turns joined by
    one space; the label the last choice equal to the answer."""
    contexts, questions, option_lists, labels = [], [], [], []
    for turns, qas, _ in json.loads(path.read_text(encoding="utf-8")):
        for qa in qas:
            contexts.append(" ".join(turns))
            questions.append(qa["question"])
            option_lists.append(qa["choice"])
            labels.append(max(c for c, choice in enumerate(qa["choice"]) if choice == qa["answer"]))
    return contexts, questions, option_lists, labels


@pytest.mark.parametrize("config, key", [("llama_7b_zh_c3_eval_prompt_v1_0_test", "c3_d"),
                                         ("llama_7b_zh_c3_m_eval_prompt_v1_0_test", "c3_m")])
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_c3_prompts_are_the_original_dream_reader_prompts_for_every_bundled_item(config, key, split):
    node = evaluator_node("conf/llama/zh", config, key, [f"evaluators.{key}.reader.split={split}"])
    prompts = instantiate(node).prompts
    contexts, questions, option_lists, _ = dream_reader(REPO / "data/samples/c3" / f"c3-{key[-1]}-{split}.json")
    expected = [zh_rule(MultipleChoiceItem(id=str(i), passage=c, question=q, options=tuple(o), gold=None, source="",
                                           position=""))
                for i, (c, q, o) in enumerate(zip(contexts, questions, option_lists))]
    assert len(prompts) == len(expected) >= 5 and prompts == expected
    documents = json.loads((REPO / "data/samples/c3" / f"c3-{key[-1]}-{split}.json").read_text(encoding="utf-8"))
    assert key == "c3_m" or any(len(turns) > 1 for turns, _, _ in documents)  # dialogues: the join is exercised


@pytest.mark.parametrize("folder, name, key, expected", [
    ("conf/llama/zh", "llama_7b_zh_logiqav2_eval_prompt_v1_0_test", "logiqa_v2_zh", zh_rule(ITEM)),
    ("conf/llama/zh", "belle_7b_c3_m_eval_prompt_v1_0_test", "c3_m", zh_rule(ITEM)),
    ("conf/llama/wiki", "llama_7b_flan_v1_4_reclor_eval_prompt", "reclor", en_rule(ITEM, "The answer is")),
    ("conf/llama/wiki", "vicuna_7b_reclor_eval_prompt", "reclor", en_rule(ITEM, "")),
    ("conf/llama/wiki", "vicuna_7b_reclor_eval_prompt_v1_1", "reclor", en_rule(
        ITEM, "### Response:", "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nAnswer the following question with the given context:")),
])
def test_prompts_are_the_originals_byte_for_byte(folder, name, key, expected):
    prompt = instantiate(evaluator_node(folder, name, key).prompt)
    assert prompt.render([ITEM], []) == [expected]
    assert "\n\n\n\n" in expected and expected.count("\n\n\n") >= 2  # 0 shots: four newlines; options end with one


def test_k_shot_exemplars_follow_the_original_layout():
    node = evaluator_node("conf/llama/zh", "llama_7b_zh_logiqav2_eval_prompt_v1_0_test", "logiqa_v2_zh")
    prompt = instantiate(node.prompt, num_shots=1)
    assert prompt.render([ITEM], [SHOT]) == [zh_rule(ITEM, [SHOT])]


@pytest.mark.parametrize("generated, trigger, position, prompt, expected", [
    ("Based on the text, C", None, "first", "", 1),                       # the B of "Based": anywhere, as the original
    ("甲最高，答案是C", None, "first", "", 2),
    (" B ... so the answer is A", None, "last", "", 0),                    # reverse: the last letter
    (" C. The answer is D", "The answer is", "last", "…The answer is", 2),  # prompt ends with the trigger: up to its repeat
    ("I think A. ### Response: B", "### Response:", "first", "x\n\n### Response:", 0),
    ("no letter here", None, "first", "", None),
    ("E", None, "first", "", None),                                          # only A–D
])
def test_answer_reading_of_the_original(generated, trigger, position, prompt, expected):
    assert extract_choice(generated, 4, trigger, position, "anywhere", prompt) == expected


@pytest.mark.slow
def test_two_ranks_write_one_prediction_per_item_with_acc_unparsable_and_npy(tmp_path):
    run_trainer(tmp_path, ["model_name_or_path=models/tiny_llama", "precision=fp32",
                           "evaluators.logiqa_v2_zh.generation.max_new_tokens=8"],
                nproc=2, config=("conf/llama/zh", "llama_7b_zh_logiqav2_eval_prompt_v1_0_test"))
    folder = tmp_path / "eval" / "tiny_llama" / "logiqa_v2_zh"
    items = [line for line in (REPO / "data/samples/logiqa_v2/test_zh.txt").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(p["index"] for p in predictions) == list(range(len(items)))  # exactly one per item
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n"] == len(items) and 0 <= metrics["acc"] <= 1
    assert metrics["unparsable"] == sum(p["prediction"] is None for p in predictions)
    indices = np.load(folder / "decode_results.npy")
    assert indices.tolist() == [0 if p["prediction"] is None else p["prediction"] for p in predictions]
    assert all(p["prompt"].startswith("阅读下面的文章并从选项中选择的答案回答问题：\n\n\n\n") for p in predictions)
