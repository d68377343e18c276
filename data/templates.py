"""Prompt templates for instruction data: the alpaca layout for single-turn records, and the same
markers for every user turn of a conversation (zh and en defaults; `none` adds no decoration).

The assistant's answer follows the prompt directly and is closed by EOS, never by template text."""
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    with_input: str      # single turn; uses {instruction} and {input}
    without_input: str   # single turn; uses {instruction}
    system: str          # what a conversation starts with when the record has no system message
    user: str            # one user turn of a conversation; uses {message}

    def format(self, instruction: str, input: str = "") -> str:
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)

    def user_turn(self, message: str) -> str:
        return self.user.format(message=message)


TEMPLATES = {
    "zh": PromptTemplate(
        with_input="下面是一条描述任务的指令，以及提供更多上下文的输入。请写出恰当完成该任务的回答。\n\n"
                   "### 指令：\n{instruction}\n\n### 输入：\n{input}\n\n### 回答：\n",
        without_input="下面是一条描述任务的指令。请写出恰当完成该任务的回答。\n\n### 指令：\n{instruction}\n\n### 回答：\n",
        system="下面是用户与助手之间的多轮对话。请写出恰当完成每条指令的回答。",
        user="\n\n### 指令：\n{message}\n\n### 回答：\n",
    ),
    "en": PromptTemplate(
        with_input="Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        without_input="Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        system="Below is a conversation between a user and an assistant. Write responses that appropriately "
               "complete each request.",
        user="\n\n### Instruction:\n{message}\n\n### Response:\n",
    ),
    "none": PromptTemplate(with_input="{instruction}\n{input}\n", without_input="{instruction}\n",
                           system="", user="{message}\n"),
}


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
