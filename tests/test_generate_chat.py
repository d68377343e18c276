"""generate.py prompts as training tokenizes (issue 27 requirement 4): the prompt ids are the untrained
prefix of the training sample (text templates, panda's original N, the chat template), `--template chat`
renders with the checkpoint's own chat template and keeps the history in interactive mode, and a checkpoint
without a chat template is refused in one line."""
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from data.formats import to_examples
from data.records import Record
from data.templates import get_template
from data.tokenization import ExampleTokenizer
from generate import end_of_turn_ids, prompt_ids
from tests import tokenizer_kinds
from tests.forked_ranks import run_script
from tests.tokenizer_kinds import CHAT_TEMPLATES, REPO


def training_prompt(tokenizer, template: str, record: dict) -> list[int]:
    """The tokens before the first trained one of the training sample."""
    [example] = to_examples(Record(record, "inline.jsonl", 1), get_template(template))
    [segment] = ExampleTokenizer(tokenizer, 4096)([example])[0].segments
    return [int(t) for t in segment.input_ids[:list(segment.trained).index(True)]]


@pytest.mark.parametrize("kind", ["llama2", "llama3", "qwen2", "tiny_bpe"])
@pytest.mark.parametrize("template", ["zh", "en", "panda", "chat"])
def test_the_prompt_is_the_training_samples_context(kind, template):
    tokenizer = tokenizer_kinds.tokenizer(kind)
    if not tokenizer.chat_template:
        tokenizer.chat_template = (CHAT_TEMPLATES / "llama2_chat.jinja").read_text(encoding="utf-8")
    for question, answer in (("What is 30 plus 34?", "30 plus 34 is 64."), ("长城有多长？", "两万多公里。")):
        record = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]} \
            if template == "chat" else {"instruction": question, "output": answer}
        assert prompt_ids(tokenizer, question, template)[0].tolist() == training_prompt(tokenizer, template, record)


def test_chat_history_is_rendered_as_in_training():
    tokenizer = tokenizer_kinds.tokenizer("llama3")
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    record = {"messages": history + [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    [example] = to_examples(Record(record, "inline.jsonl", 1), get_template("chat"))
    [segment] = ExampleTokenizer(tokenizer, 4096)([example])[0].segments
    ids, trained = [int(t) for t in segment.input_ids], list(segment.trained)
    last_start = max(i for i in range(1, len(ids)) if trained[i] and not trained[i - 1])
    assert prompt_ids(tokenizer, "2+2?", "chat", history)[0].tolist() == ids[:last_start]
    assert end_of_turn_ids(tokenizer, "chat") == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")]


def greedy(model, input_ids: torch.Tensor, stops: list[int]) -> list[int]:
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=8, eos_token_id=stops, pad_token_id=stops[0])
    return output[0, input_ids.shape[1]:].tolist()


def test_interactive_chat_keeps_the_history(tmp_path):
    """A checkpoint folder whose tokenizer carries Llama-2-chat's template: the second answer is generated
    after the first exchange, rendered by that template."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(REPO / "models" / "tiny_llama", folder)
    tokenizer = tokenizer_kinds.tokenizer("tiny_bpe")
    tokenizer.chat_template = (CHAT_TEMPLATES / "llama2_chat.jinja").read_text(encoding="utf-8")
    tokenizer.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    stops = end_of_turn_ids(tokenizer, "chat")
    first = tokenizer.decode(greedy(model, prompt_ids(tokenizer, "你好", "chat"), stops), skip_special_tokens=True)
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": first}]
    second = tokenizer.decode(greedy(model, prompt_ids(tokenizer, "2+2?", "chat", history), stops),
                              skip_special_tokens=True)
    fresh = tokenizer.decode(greedy(model, prompt_ids(tokenizer, "2+2?", "chat"), stops), skip_special_tokens=True)
    assert second != fresh  # the history changes the answer
    result = run_script("generate.py", ["--model", str(folder), "--template", "chat", "--temperature", "0",
                                        "--max-new-tokens", "8"], stdin="你好\n2+2?\nreset\n2+2?\nexit\n", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == f"{first}\n{second}\n{fresh}\n"


def test_chat_without_a_chat_template_is_one_line():
    result = run_script("generate.py", ["--model", "models/tiny_llama", "--template", "chat", "--prompt", "hi"],
                        timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: template=chat: the tokenizer has no chat_template")
