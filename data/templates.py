"""Prompt templates for instruction data (alpaca layout; zh and en defaults)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    with_input: str      # uses {instruction} and {input}
    without_input: str   # uses {instruction}

    def format(self, instruction: str, input: str = "") -> str:
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)


TEMPLATES = {
    "zh": PromptTemplate(
        with_input="下面是一条描述任务的指令，以及提供更多上下文的输入。请写出恰当完成该任务的回答。\n\n"
                   "### 指令：\n{instruction}\n\n### 输入：\n{input}\n\n### 回答：\n",
        without_input="下面是一条描述任务的指令。请写出恰当完成该任务的回答。\n\n### 指令：\n{instruction}\n\n### 回答：\n",
    ),
    "en": PromptTemplate(
        with_input="Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        without_input="Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
    ),
    "none": PromptTemplate(with_input="{instruction}\n{input}\n", without_input="{instruction}\n"),
}


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
