"""Records → examples: which text is context (never trained) and which is trained.

The format is recognised per record: the first layout whose required fields are all present wins
(a record lacking some of them is reported against the layout it shares most fields with).

    alpaca / BELLE   {"instruction": str | [str], "input": str (optional), "output": str}
    COIG             {"inputs": str, "targets": str}, or a list of them (one per round)
    ShareGPT         {"conversations": [{"from": "system"|"human"|"gpt"|"function_call"|"observation",
                      "value": str}, ...], "system": str (optional), "tools": str | list (optional)}
    messages         {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str | [parts] | null,
                      "tool_calls": [...] (assistant, optional)}, ...], "tools": [...] (optional)}
    MOSS             {"meta_instruction": str, "chat": {"turn_1": {"Human": str, "Inner Thoughts": str,
                      "Commands": str, "Tool Responses": str, "MOSS": str}, ...}}  (plugin fields optional)
    WuDao            {"title": str (optional), "content": str}  → a document "title\\ncontent"
    raw text         {"text": str, ...} (JSON lines, wikiextractor's {"id", "url", "title", "text"}, every
                      document of a .txt file)

Instruction records and conversations become dialogues: prompt pieces untrained, every assistant turn
trained and closed by EOS. Tool calls (ShareGPT `function_call`, OpenAI `tool_calls`, MOSS `Inner
Thoughts` + `Commands`) are assistant output, so trained; tool results (`observation`, role `tool`, MOSS
`Tool Responses`) are context. WuDao and raw text become documents (every token trained).
"""
import json
import random
import re
from dataclasses import dataclass

from data.records import DataError, Record
from data.templates import ChatTemplate, PromptTemplate
from general_util.errors import ConfigError

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "chatgpt", "moss"}
SYSTEM_ROLES = {"system"}
TOOL_CALL_ROLES = {"function_call"}
TOOL_RESULT_ROLES = {"observation", "tool", "function"}
MOSS_MARKUP = re.compile(r"^<\|(Human|MOSS)\|>:\s?|<(eoh|eom)>\s*$")
MOSS_TOOL_CALL_FIELDS = ("Inner Thoughts", "Commands")  # what MOSS writes before a plugin runs
MOSS_TOOL_RESULT_FIELD = "Tool Responses"
COIG_ROUNDS = ("dialogue", "per_round")
META_INSTRUCTION = ("keep", "drop")


@dataclass(frozen=True)
class RecordOptions:
    """How records map to examples where a layout allows a choice (dataset settings).
    `coig_rounds`: a multi-round COIG record is one dialogue, or one sample per round (the original
    recipes: the earlier rounds joined with blank lines, then the round's inputs).
    `moss_meta_instruction`: MOSS's meta instruction opens the context (keep) or is left out (drop)."""
    coig_rounds: str = "dialogue"
    moss_meta_instruction: str = "keep"

    def __post_init__(self):
        if self.coig_rounds not in COIG_ROUNDS:
            raise ConfigError(f"coig_rounds={self.coig_rounds!r}: use one of {', '.join(COIG_ROUNDS)}")
        if self.moss_meta_instruction not in META_INSTRUCTION:
            raise ConfigError(f"moss_meta_instruction={self.moss_meta_instruction!r}: use keep or drop")


@dataclass(frozen=True)
class Example:
    """`pieces`: (text, trained) in order. A dialogue alternates prompt pieces (untrained) and responses
    (trained, each followed by EOS) and ends with a response; a document is one trained piece. With the
    chat template, `messages` (OpenAI-style dicts) and `tools` are kept instead, rendered by the tokenizer.
    `label_boundary`: the template's rule for where a response's loss starts (data/tokenization.py)."""
    pieces: tuple[tuple[str, bool], ...] = ()
    document: bool = False
    messages: tuple[dict, ...] = ()
    tools: list | None = None  # the chat template's tool descriptions (parsed JSON)
    label_boundary: str = "characters"


@dataclass
class Conversation:
    """A record's dialogue before templating: turns of (role, text) with role one of system, user,
    assistant, tool_call (trained like assistant text) and tool (a tool's result, context)."""
    turns: list[tuple[str, str]]
    system: str | None = None
    tools: str | None = None


def to_examples(record: Record, template: PromptTemplate | ChatTemplate,
                options: RecordOptions = RecordOptions()) -> list[Example]:
    data = record.data
    if isinstance(data, list):
        return _coig_rounds(record, data, template, options)
    converter = _detect(record, template)
    return converter(record, template, options)


def _detect(record: Record, template):
    data = record.data
    present = {key for key, value in data.items() if value is not None}
    converters = CONVERTERS
    if getattr(template, "raw_text_first", False) and isinstance(data.get("text"), str) and data["text"].strip():
        return _text
    for _, required, _, convert in converters:
        if required <= present:
            return convert
    name, required, known, convert = max(converters, key=lambda c: len(c[2] & present))
    if not known & present:
        raise DataError(record.source, record.line, f"unrecognised record with keys {sorted(data)}; expected "
                        + ", ".join(f"{n} ({'/'.join(sorted(r))})" for n, r, _, _ in converters),
                        kind="unrecognised record")
    missing = ", ".join(repr(m) for m in sorted(required - present))
    raise DataError(record.source, record.line, f"missing field{'s' if ',' in missing else ''} {missing} for the "
                    f"{name} layout ({'/'.join(sorted(required))})", kind="missing field")


def _field(record: Record, data: dict, name: str, types=str, required: bool = True):
    if name not in data or data[name] is None:
        if required:
            raise DataError(record.source, record.line, f"missing field '{name}'", kind="missing field")
        return None
    value = data[name]
    if not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(record.source, record.line, f"field '{name}' is {type(value).__name__}, expected {expected}",
                        kind="wrong type")
    return value


def _response(record: Record, text: str, name: str) -> str:
    if not text.strip():
        raise DataError(record.source, record.line, f"empty response ('{name}')", kind="empty response")
    return text


def _instruction(record: Record, template, value) -> str:
    if not isinstance(value, list):
        return value
    if not value or not all(isinstance(part, str) for part in value):
        raise DataError(record.source, record.line, "field 'instruction' is an empty list or has non-string items",
                        kind="wrong type")
    if getattr(template, "instruction_list", "join") == "random":  # seeded by the record: the same in every build
        return random.Random(f"{record.source}:{record.line}").choice(value)
    return "\n".join(value)


def _single_turn(template, instruction: str, input_text: str | None, response: str, use_input: bool) -> Example:
    if isinstance(template, ChatTemplate):
        user = f"{instruction}\n{input_text}" if input_text else instruction
        return Example(messages=({"role": "user", "content": user}, {"role": "assistant", "content": response}))
    prompt = template.with_input.format(instruction=instruction, input=input_text or "") if use_input \
        else template.without_input.format(instruction=instruction)
    return Example(((prompt, False), (response, True)), label_boundary=template.label_boundary)


def _alpaca(record: Record, template, options: RecordOptions) -> list[Example]:
    data = record.data
    instruction = _instruction(record, template, _field(record, data, "instruction", (str, list)))
    input_text = _field(record, data, "input", required=False)
    output = _response(record, _field(record, data, "output"), "output")
    # the original recipes appended " " + input whenever the field existed, even empty
    use_input = bool(input_text) or (input_text is not None and getattr(template, "raw_text_first", False))
    return [_single_turn(template, instruction, input_text, output, use_input)]


def _coig(record: Record, template, options: RecordOptions) -> list[Example]:
    inputs = _field(record, record.data, "inputs")
    targets = _response(record, _field(record, record.data, "targets"), "targets")
    return [_single_turn(template, inputs, None, targets, False)]


def _coig_rounds(record: Record, rounds: list, template, options: RecordOptions) -> list[Example]:
    pairs = []
    for number, item in enumerate(rounds, start=1):
        if not isinstance(item, dict):
            raise DataError(record.source, record.line, f"round {number} is {type(item).__name__}, expected an "
                            "object with inputs/targets", kind="wrong type")
        pairs.append((_field(record, item, "inputs"), _field(record, item, "targets")))
    if not pairs:
        raise DataError(record.source, record.line, "empty list of rounds", kind="empty response")
    if options.coig_rounds == "dialogue":
        turns = [turn for inputs, targets in pairs for turn in (("user", inputs), ("assistant", targets))]
        return [_dialogue(record, Conversation(turns), template)]
    examples, history = [], ""
    for number, (inputs, targets) in enumerate(pairs, start=1):
        response = _response(record, targets, f"round {number} targets")
        examples.append(_single_turn(template, history + "\n\n" + inputs, None, response, False))
        history += ("\n\n" if history else "") + inputs + "\n\n" + targets
    return examples


def _text_of(record: Record, value, where: str) -> str:
    """A message's content: a string, or a list of parts of which the text ones are joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for number, part in enumerate(value, start=1):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise DataError(record.source, record.line, f"{where} part {number} is of type {kind!r}; only text "
                                "parts can be trained", kind="non-text content part")
            texts.append(part["text"])
        return "\n".join(texts)
    raise DataError(record.source, record.line, f"{where} is {type(value).__name__}, expected str or a list of "
                    "text parts", kind="wrong type")


def _tools_text(record: Record, value) -> str | None:
    """The record's tool descriptions as text; none for an empty field (LLaMA-Factory writes "[]")."""
    if value is None or value == [] or (isinstance(value, str) and value.strip() in ("", "[]")):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    raise DataError(record.source, record.line, f"field 'tools' is {type(value).__name__}, expected str or list",
                    kind="wrong type")


def _role_of(record: Record, role: str) -> str:
    role = role.lower()
    for name, roles in (("system", SYSTEM_ROLES), ("user", USER_ROLES), ("assistant", ASSISTANT_ROLES),
                        ("tool_call", TOOL_CALL_ROLES), ("tool", TOOL_RESULT_ROLES)):
        if role in roles:
            return name
    raise DataError(record.source, record.line, f"unknown role {role!r}; expected one of "
                    f"{sorted(USER_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES | TOOL_CALL_ROLES | TOOL_RESULT_ROLES)}",
                    kind="unknown role")


def _sharegpt(record: Record, template, options: RecordOptions) -> list[Example]:
    turns = []
    for number, turn in enumerate(_field(record, record.data, "conversations", list), start=1):
        if not isinstance(turn, dict):
            raise DataError(record.source, record.line, f"conversations[{number}] is {type(turn).__name__}, "
                            "expected an object", kind="wrong type")
        role = _role_of(record, _field(record, turn, "from"))
        turns.append((role, _text_of(record, _field(record, turn, "value", (str, list)), f"conversations[{number}]")))
    conversation = Conversation(turns, _field(record, record.data, "system", required=False),
                                _tools_text(record, record.data.get("tools")))
    return [_dialogue(record, conversation, template)]


def _tool_calls_text(record: Record, calls, where: str) -> str:
    """OpenAI `tool_calls` as the text the model is trained to write: one JSON object per call,
    {"name": ..., "arguments": {...}}, one per line."""
    if not isinstance(calls, list):
        raise DataError(record.source, record.line, f"{where}.tool_calls is {type(calls).__name__}, expected a list",
                        kind="wrong type")
    lines = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise DataError(record.source, record.line, f"{where}.tool_calls: each call needs function.name",
                            kind="missing field")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # kept as the string it is
        lines.append(json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False))
    return "\n".join(lines)


def _messages(record: Record, template, options: RecordOptions) -> list[Example]:
    turns = []
    for number, message in enumerate(_field(record, record.data, "messages", list), start=1):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            raise DataError(record.source, record.line, f"{where} is {type(message).__name__}, expected an object",
                            kind="wrong type")
        role = _role_of(record, _field(record, message, "role"))
        calls = message.get("tool_calls") or ([message["function_call"]] if message.get("function_call") else None)
        content = message.get("content")
        text = _text_of(record, content, f"{where}.content") if content not in (None, "") else ""
        if role == "assistant" and calls:
            if text.strip():
                turns.append(("assistant_text", text))
            turns.append(("tool_call", _tool_calls_text(record, calls, where)))
            continue
        if content is None:
            raise DataError(record.source, record.line, f"missing field '{where}.content'", kind="missing field")
        turns.append((role, text))
    return [_dialogue(record, Conversation(turns, tools=_tools_text(record, record.data.get("tools"))), template)]


def _moss(record: Record, template, options: RecordOptions) -> list[Example]:
    chat = _field(record, record.data, "chat", dict)
    system = _field(record, record.data, "meta_instruction", required=False)
    if options.moss_meta_instruction == "drop":
        system = None
    turns = []
    for name in sorted(chat, key=lambda k: int(re.sub(r"\D", "", k) or 0)):
        turn = _field(record, chat, name, dict)
        turns.append(("user", MOSS_MARKUP.sub("", _field(record, turn, "Human"))))
        call = "".join(turn[field] for field in MOSS_TOOL_CALL_FIELDS if isinstance(turn.get(field), str))
        if call.strip():
            turns.append(("tool_call", call))
        result = turn.get(MOSS_TOOL_RESULT_FIELD)
        if isinstance(result, str) and result.strip():
            turns.append(("tool", result))
        turns.append(("assistant", MOSS_MARKUP.sub("", _field(record, turn, "MOSS"))))
    return [_dialogue(record, Conversation(turns, system if system and system.strip() else None), template)]


def _dialogue(record: Record, conversation: Conversation, template) -> Example:
    """Role-tagged turns → prompt/response pieces. The context before the first answer opens with the
    system text (the record's system field or leading system turn, else the template's) and the tool
    descriptions; consecutive context turns merge into one prompt; context after the last trained turn
    carries no loss and is left out."""
    turns = list(conversation.turns)
    system = conversation.system
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    if isinstance(template, ChatTemplate):
        return _chat_example(record, conversation, system, turns)
    system_text = template.system_text(template.system if system is None else system, conversation.tools)
    pieces, prompt, responses, said = [], None, 0, ""
    for role, text in turns:
        if role == "assistant_text":  # what an assistant says before its tool call: one trained piece with it
            said = text + "\n"
            continue
        if prompt is None:
            prompt = template.separator if pieces else system_text
        if role == "system":
            prompt += text
        elif role == "user":
            prompt += template.user_turn(text)
        elif role == "tool":
            prompt += template.observation.format(message=text)
        else:  # assistant text, or a tool call: trained
            responses += 1
            response = _response(record, said + text, f"assistant turn {responses}") + template.assistant_suffix
            said = ""
            pieces += [(prompt if pieces else prompt.lstrip("\n"), False), (response, True)]
            prompt = None
    if not pieces:
        raise DataError(record.source, record.line, "empty response (no assistant turn)", kind="empty response")
    return Example(tuple(pieces), label_boundary=template.label_boundary)


def _chat_example(record: Record, conversation: Conversation, system: str | None, turns) -> Example:
    """OpenAI-style messages for the tokenizer's chat template (tool calls in `tool_calls`)."""
    messages = [{"role": "system", "content": system}] if system else []
    for role, text in turns:
        if role == "tool_call":
            calls = [{"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}}
                     for call in _parsed_calls(record, text)]
            if messages and messages[-1].pop("said", False):  # the same assistant message
                messages[-1]["tool_calls"] = calls
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif role == "assistant_text":
            messages.append({"role": "assistant", "content": text, "said": True})
        else:
            messages.append({"role": role, "content": text})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(record.source, record.line, "empty response (no assistant turn)", kind="empty response")
    tools = None
    if conversation.tools:
        try:
            tools = json.loads(conversation.tools)
        except json.JSONDecodeError:
            tools = None
        if not isinstance(tools, list):
            raise DataError(record.source, record.line, "field 'tools' is not a JSON list of tool descriptions "
                            "(the chat template takes them so)", kind="malformed tools")
    return Example(messages=tuple(messages), tools=tools or None)


def _parsed_calls(record: Record, text: str) -> list[dict]:
    """A tool-call turn's calls: one JSON object (or a list of them), or one object per line as
    `_tool_calls_text` writes them; each needs a `name`."""
    try:
        parsed = json.loads(text)
        calls = parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError:
        try:
            calls = [json.loads(line) for line in text.splitlines()]
        except json.JSONDecodeError:
            calls = []
    if not calls or not all(isinstance(call, dict) and "name" in call for call in calls):
        raise DataError(record.source, record.line, "a tool call is not a JSON object with a 'name' "
                        "(needed by the chat template's tool_calls)", kind="malformed tool call")
    return calls


def _document(record: Record, text: str) -> list[Example]:
    if not text.strip():
        raise DataError(record.source, record.line, "empty text", kind="empty text")
    return [Example(((text, True),), document=True)]


def _wudao(record: Record, template, options: RecordOptions) -> list[Example]:
    title = _field(record, record.data, "title", required=False) or ""
    content = _field(record, record.data, "content")
    return _document(record, f"{title}\n{content}" if title.strip() and content.strip() else content)


def _text(record: Record, template=None, options: RecordOptions = RecordOptions()) -> list[Example]:
    return _document(record, _field(record, record.data, "text"))


# (name, required fields, every field the layout knows, converter): the first whose required fields are
# all present converts the record.
CONVERTERS = [
    ("alpaca", {"instruction", "output"}, {"instruction", "input", "output"}, _alpaca),
    ("COIG", {"inputs", "targets"}, {"inputs", "targets"}, _coig),
    ("ShareGPT", {"conversations"}, {"conversations", "tools"}, _sharegpt),
    ("messages", {"messages"}, {"messages", "tools"}, _messages),
    ("MOSS", {"chat"}, {"chat", "meta_instruction", "conversation_id", "num_turns"}, _moss),
    ("WuDao", {"content"}, {"title", "content", "dataType", "uniqueKey"}, _wudao),
    ("text", {"text"}, {"text", "url"}, _text),
]
