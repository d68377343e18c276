"""`template: chat`: conversations rendered with the tokenizer's chat template, with an exact loss mask
(assistant turns and their end-of-turn only), for templates without and with `{% generation %}` markers.

tests/fixtures/chat_templates/: the `chat_template` strings of Llama-2-7b-chat-hf and Meta-Llama-3-8B-Instruct
(tokenizer_config.json, as published), and the Llama-3 layout written with generation markers."""
import json
from pathlib import Path

import pytest

from data.chat import assistant_spans, render_chat
from data.datasets import TokenizedDataset
from data.records import DataError
from general_util.errors import ConfigError
from models.loading import load_tokenizer

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
CONVERSATION = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "你好"},
                                  {"from": "gpt", "value": "你好！"}, {"from": "human", "value": "2+2?"},
                                  {"from": "gpt", "value": "4"}]}
EXPECTED_TRAINED = {"llama2_chat": [" 你好！ </s>", " 4 </s>"], "llama3_instruct": ["你好！<|eot_id|>", "4<|eot_id|>"],
                    "llama3_generation_markers": ["你好！<|eot_id|>", "4<|eot_id|>"]}


def tokenizer_with(name: str):
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>", chat_template=str(TEMPLATES / f"{name}.jinja"))
    if name.startswith("llama3"):  # single special tokens in Llama-3's vocabulary, as there
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>",
                                                                    "<|eot_id|>"]})
    return tokenizer


def trained_runs(tokenizer, input_ids, trained) -> list[str]:
    runs, current = [], []
    for token, flag in zip(input_ids, trained):
        if flag:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAINED))
def test_loss_mask_is_exactly_the_assistant_turns(tmp_path, name):
    tokenizer = tokenizer_with(name)
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(CONVERSATION, ensure_ascii=False) + "\n", encoding="utf-8")
    data = TokenizedDataset({"main": {"files": str(path)}}, tokenizer, template="chat", max_seq_length=512,
                            cache_dir=str(tmp_path / "cache"))
    item = data[0]
    trained = [label != -100 for label in item["labels"]]
    assert trained_runs(tokenizer, item["input_ids"], trained) == EXPECTED_TRAINED[name]
    assert item["input_ids"].count(tokenizer.bos_token_id) == (2 if name == "llama2_chat" else 1)  # only the template's
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"})
    rendered = tokenizer.apply_chat_template(list(messages), tokenize=False)
    assert tokenizer.decode(item["input_ids"]) == rendered  # the row is the template's text, nothing added
    if "generation" not in name:  # the spans the mask comes from are the assistant texts of the rendering
        text, spans = assistant_spans(tokenizer, messages, None)
        assert text == rendered and [text[a:b] for a, b in spans] == EXPECTED_TRAINED[name]


def test_both_mask_methods_agree_on_the_llama3_layout():
    messages = ({"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"})
    plain = render_chat(tokenizer_with("llama3_instruct"), messages, None)
    marked = render_chat(tokenizer_with("llama3_generation_markers"), messages, None)
    assert plain == marked and any(marked[1])


def test_truncation_keeps_the_last_end_of_turn(tmp_path):
    tokenizer = tokenizer_with("llama3_instruct")
    long = {"messages": [{"role": "user", "content": "问 " * 40}, {"role": "assistant", "content": "答 " * 200}]}
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(long, ensure_ascii=False) + "\n", encoding="utf-8")
    data = TokenizedDataset({"main": {"files": str(path)}}, tokenizer, template="chat", max_seq_length=64,
                            cache_dir=str(tmp_path / "cache"))
    item = data[0]
    assert len(item["input_ids"]) == 64 and data.report["truncated"] == 1 and data.report["prompt_lost"] == 0
    assert item["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|eot_id|>") and item["labels"][-1] != -100


def test_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>",
                               chat_template="{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    messages = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"})
    with pytest.raises(DataError, match="does not render message 2 as a prefix"):
        render_chat(tokenizer, messages, None)
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": list(messages)}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:1: the chat template does not render"):
        TokenizedDataset({"main": {"files": str(path)}}, tokenizer, template="chat", cache_dir=str(tmp_path / "c"))


def test_a_tokenizer_without_chat_template_is_a_config_error(tmp_path):
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>")
    with pytest.raises(ConfigError, match="template=chat: the tokenizer has no chat_template"):
        TokenizedDataset({"main": {"files": "data/samples/sharegpt_sample.json"}}, tokenizer, template="chat",
                         cache_dir=str(tmp_path))


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAINED))
def test_an_answer_weighted_0_is_rendered_but_not_trained(name):
    """LLaMA-Factory's v1 `loss_weight: 0.0` on an assistant message (data/formats.py marks it trained=False): the
    template writes it as any answer, the mask leaves it out, with and without generation markers."""
    tokenizer = tokenizer_with(name)
    messages = ({"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！", "trained": False},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"})
    ids, trained = render_chat(tokenizer, messages, None)
    assert trained_runs(tokenizer, ids, trained) == EXPECTED_TRAINED[name][1:]
    assert "你好！" in tokenizer.decode(ids)
