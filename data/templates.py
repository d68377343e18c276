"""Prompt templates for instruction data: how a record's system text, user turns, tool results and
single-turn instruction/input are laid out around the trained responses.

Presets: `zh` and `en` (the alpaca layout), `none` (no decoration), `panda` (the original PandaLLM recipes:
`instruction + " " + input + " " + response + EOS`, one instruction picked at random from a list, a
record with a non-empty `text` trained as raw text), and `chat` (the tokenizer's own chat template,
see `data.chat`). A custom template is a mapping in YAML with any of the PromptTemplate fields, over a
`preset` (default `none`):

    template:
      preset: none
      system: "You are a helpful assistant."
      user: "<|user|>\\n{message}\\n<|assistant|>\\n"      # user prefix + message + suffix + assistant prefix
      assistant_suffix: "\\n"                              # trained after each response, before EOS
      separator: ""                                       # untrained, between a response and the next turn

The assistant's answer follows the prompt directly and is closed by EOS (trained). The sample's token ids are
the tokenizer's encoding of its whole rendered text (data/tokenization.py); `label_boundary` says where each
response's loss starts: `characters` (default: the tokens holding any of the response's characters) or
`prompt_length` (the panda preset, the original recipes' rule: after as many tokens as the text before the
response, without its final " ", encodes to on its own)."""
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from general_util.errors import ConfigError


@dataclass(frozen=True)
class PromptTemplate:
    with_input: str               # single turn; uses {instruction} and {input}
    without_input: str            # single turn; uses {instruction}
    system: str                   # what a conversation starts with when the record has no system message
    user: str                     # one user turn of a conversation, up to the assistant's cue; uses {message}
    system_format: str = "{system}"  # how a system text is written; uses {system}
    observation: str = "{message}\n"  # a tool result (context, untrained); uses {message}
    tools: str = "\n{tools}\n"    # the record's tool descriptions, added after the system text; uses {tools}
    assistant_suffix: str = ""    # trained text closing each response, before EOS
    separator: str = ""           # untrained text between a response and the next turn
    instruction_list: str = "join"  # an instruction given as a list: join (lines) | random (one, seeded by record)
    raw_text_first: bool = False  # a record with a non-empty `text` is raw text even if it has instruction fields
    label_boundary: str = "characters"  # where the loss starts: characters | prompt_length (data/tokenization.py)

    def format(self, instruction: str, input: str = "") -> str:
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)

    def user_turn(self, message: str) -> str:
        return self.user.format(message=message)

    def system_text(self, system: str, tools: str | None = None) -> str:
        text = self.system_format.format(system=system) if system else ""
        return text + (self.tools.format(tools=tools) if tools else "")


class ChatTemplate:
    """Marker: render conversations with the tokenizer's `chat_template` (data.chat)."""
    name = "chat"

    def __eq__(self, other) -> bool:
        return isinstance(other, ChatTemplate)

    def __hash__(self) -> int:
        return hash(self.name)


TEMPLATES = {
    "zh": PromptTemplate(
        with_input="下面是一条描述任务的指令，以及提供更多上下文的输入。请写出恰当完成该任务的回答。\n\n"
                   "### 指令：\n{instruction}\n\n### 输入：\n{input}\n\n### 回答：\n",
        without_input="下面是一条描述任务的指令。请写出恰当完成该任务的回答。\n\n### 指令：\n{instruction}\n\n### 回答：\n",
        system="下面是用户与助手之间的多轮对话。请写出恰当完成每条指令的回答。",
        user="\n\n### 指令：\n{message}\n\n### 回答：\n",
        observation="\n\n### 工具结果：\n{message}\n\n### 回答：\n",
        tools="\n\n### 可用工具：\n{tools}",
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
        observation="\n\n### Tool result:\n{message}\n\n### Response:\n",
        tools="\n\n### Available tools:\n{tools}",
    ),
    "none": PromptTemplate(with_input="{instruction}\n{input}\n", without_input="{instruction}\n",
                           system="", user="{message}\n"),
    # The original recipes: prompt = instruction (+ " " + input whenever the record has that field, even empty:
    # two spaces then), trained sequence = prompt + " " + response + EOS.
    # Labels as the original's `vanilla_seq2seq_convertor`: the whole string encoded once, its first N positions
    # masked, N = the length of the prompt's own encoding (without the " " separator, which is trained).
    "panda": PromptTemplate(with_input="{instruction} {input} ", without_input="{instruction} ", system="",
                            user="{message} ", observation="{message} ", tools="{tools} ",
                            instruction_list="random", raw_text_first=True, label_boundary="prompt_length"),
}
LABEL_BOUNDARIES = ("characters", "prompt_length")
TEMPLATE_NAMES = sorted(TEMPLATES) + ["chat"]
FIELD_NAMES = [field.name for field in fields(PromptTemplate)]


def get_template(spec: str | Mapping) -> PromptTemplate | ChatTemplate:
    """A preset by name, `chat`, or a mapping of PromptTemplate fields over a `preset`."""
    if isinstance(spec, str):
        if spec == "chat":
            return ChatTemplate()
        if spec not in TEMPLATES:
            raise ConfigError(f"template={spec!r}: unknown prompt template; use one of {TEMPLATE_NAMES} or a mapping "
                              f"of {FIELD_NAMES} (data/templates.py)")
        return TEMPLATES[spec]
    spec = dict(spec)
    preset = spec.pop("preset", "none")
    base = get_template(preset)
    if isinstance(base, ChatTemplate):
        raise ConfigError("template.preset='chat': the chat template comes from the tokenizer and takes no fields")
    unknown = sorted(set(spec) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"template.{unknown[0]}: not a template field; use {', '.join(FIELD_NAMES)}")
    if spec.get("instruction_list", base.instruction_list) not in ("join", "random"):
        raise ConfigError(f"template.instruction_list={spec['instruction_list']!r}: use join or random")
    if spec.get("label_boundary", base.label_boundary) not in LABEL_BOUNDARIES:
        raise ConfigError(f"template.label_boundary={spec['label_boundary']!r}: use {' or '.join(LABEL_BOUNDARIES)}")
    template = replace(base, **spec)
    for name, placeholders in (("with_input", ("instruction", "input")), ("without_input", ("instruction",)),
                               ("user", ("message",)), ("observation", ("message",)), ("tools", ("tools",)),
                               ("system_format", ("system",))):
        try:
            getattr(template, name).format(**{p: "" for p in placeholders})
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"template.{name}={getattr(template, name)!r}: may only use "
                              f"{', '.join('{' + p + '}' for p in placeholders)} ({e})") from None
    return template
