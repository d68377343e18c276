"""The original PandaLLM evaluation protocol under the original config names: the prompt byte for byte as
../shared/SEED_RECIPES.md states its rule (and dandelionsllm/pandallm's data/reclor_prompt.py builds it), the
answer read as its post_processors/reclor.py reads it, and a 2-rank run writing one prediction per item."""
import json
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.benchmarks.items import MultipleChoiceItem
from modules.loss_impl import LossSettings
from post_processors.answer_extraction import extract_choice
from tests.test_answer_extraction import TINY, ScriptedModel
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
    evaluator = instantiate(node)
    prompts = evaluator.prompts
    contexts, questions, option_lists, labels = dream_reader(REPO / "data/samples/c3" / f"c3-{key[-1]}-{split}.json")
    assert [item.gold for item in evaluator.items] == labels
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


def test_c3_repeated_choice_gold_is_the_last_as_the_original_dream_reader(tmp_path):
    documents = [[["男：你好。", "女：你好。"], [{"question": "谁先说话？", "choice": ["男的", "女的", "男的"], "answer": "男的"}],
                  "1-1"]]
    (tmp_path / "c3-d-test.json").write_text(json.dumps(documents, ensure_ascii=False), encoding="utf-8")
    node = evaluator_node("conf/llama/zh", "llama_7b_zh_c3_eval_prompt_v1_0_test", "c3_d",
                          [f"evaluators.c3_d.data_dir={tmp_path}"])
    assert [item.gold for item in instantiate(node).items] == dream_reader(tmp_path / "c3-d-test.json")[3] == [2]
    node = evaluator_node("conf/llama/zh", "eval_c3_d", "c3_d", [f"evaluators.c3_d.data_dir={tmp_path}",
                                                                 "evaluators.c3_d.reader.split=test"])
    assert [item.gold for item in instantiate(node).items] == [0]  # our own C3 configs: the first


class Recording(torch.nn.Module):
    """The tiny LLaMA generating as usual, recording each call's prompt ids and output ids; `eos_bias` is
    added to the EOS logit (a model that would stop at once)."""

    def __init__(self, eos_bias: float = 0.0):
        super().__init__()
        self.model = AutoModelForCausalLM.from_pretrained(TINY).eval()
        self.calls = []
        eos = self.model.config.eos_token_id
        self.model.lm_head.register_forward_hook(lambda module, args, out: out.index_add(
            -1, torch.tensor([eos]), torch.full((*out.shape[:-1], 1), eos_bias)))
        self.config = self.model.config

    def generate(self, input_ids, attention_mask, **kwargs):
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        self.calls.append((input_ids, output[:, input_ids.shape[1]:]))
        return output


def vicuna_evaluator(*overrides):
    node = evaluator_node("conf/llama/wiki", "vicuna_7b_reclor_eval_prompt", "reclor",
                          ["evaluators.reclor.generation.max_new_tokens=4", "evaluators.reclor.generation.num_beams=1",
                           *overrides])
    return instantiate(node)


def test_eos_logit_dropped_greedy_never_stops_early(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    for suppress in (False, True):
        model = Recording(eos_bias=1e4)
        vicuna_evaluator(f"evaluators.reclor.suppress_eos={suppress}")(model, tokenizer, tmp_path / str(suppress),
                                                                       LossSettings())
        new = torch.cat([out for _, out in model.calls])
        if suppress:  # every item gets its 4 tokens, none of them EOS
            assert new.shape[1] == 4 and not (new == tokenizer.eos_token_id).any()
        else:  # EOS first: nothing generated
            assert (new[:, 0] == tokenizer.eos_token_id).all()


def test_vicuna_decode_rule_reads_the_last_letter_of_prompt_and_generation(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model = ScriptedModel(tokenizer, " none")
    vicuna_evaluator()(model, tokenizer, tmp_path / "v", LossSettings())
    predictions = [json.loads(line) for line in (tmp_path / "v/predictions.jsonl").read_text().splitlines()]
    for p in predictions:  # the original: re.findall("A|B|C|D", decode(prompt + generation))[-1]
        ids = [tokenizer.bos_token_id] + tokenizer(p["prompt"], add_special_tokens=False)["input_ids"] + model.reply
        assert p["prediction"] == "ABCD".index(re.findall("A|B|C|D", tokenizer.decode(ids, skip_special_tokens=True))[-1])
    assert {p["prediction"] for p in predictions} == {len(p["options"]) - 1 for p in predictions}  # the options' last
    vicuna_evaluator("evaluators.reclor.answer_source=generation")(model, tokenizer, tmp_path / "g", LossSettings())
    assert {json.loads(line)["prediction"] for line in (tmp_path / "g/predictions.jsonl").read_text().splitlines()} \
        == {None}  # the generation alone holds no letter


@pytest.mark.parametrize("truncation", ["right", "left"])
def test_long_prompts_are_cut_on_the_right_as_the_original_tokenizer_call(tmp_path, truncation):
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model = Recording()
    evaluator = vicuna_evaluator("evaluators.reclor.max_seq_length=48", "evaluators.reclor.batch_size=1",
                                 f"evaluators.reclor.prompt_truncation={truncation}")
    evaluator(model, tokenizer, tmp_path, LossSettings())
    full = {tuple(tokenizer(p, truncation=True, max_length=10**6)["input_ids"]) for p in evaluator.prompts}
    sent = [tuple(ids[0].tolist()) for ids, _ in model.calls]
    assert all(len(ids) == (48 if truncation == "right" else 44) for ids in sent)  # each prompt longer than 48
    if truncation == "right":  # the tokenizer's default: BOS + the prompt's first tokens
        assert set(sent) == {ids[:48] for ids in full}
    else:
        assert set(sent) == {ids[-44:] for ids in full}


def test_original_protocol_batch_sizes_and_lengths():
    for folder, name, key, batch, length in [("conf/llama/zh", "llama_7b_zh_c3_eval_prompt_v1_0_test", "c3_d", 1, 2048),
                                             ("conf/llama/wiki", "vicuna_7b_reclor_eval_prompt", "reclor", 4, 1024),
                                             ("conf/llama/wiki", "vicuna_7b_reclor_eval_prompt_v1_1", "reclor", 1, 1024)]:
        node = evaluator_node(folder, name, key)
        assert (node.batch_size, node.max_seq_length, node.prompt_truncation) == (batch, length, "right")
