"""Records → examples: which text is context (never trained) and which is trained.

The format is recognised per record from its keys:

    alpaca / BELLE   {"instruction": str | [str], "input": str (optional), "output": str}
    COIG             {"inputs": str, "targets": str}, or a list of them (one per round)
    ShareGPT         {"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}
    messages         {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
    MOSS             {"meta_instruction": str, "chat": {"turn_1": {"Human": str, "MOSS": str}, ...}}
    WuDao            {"title": str, "content": str}  → a document "title\\ncontent"
    raw text         {"text": str} (JSON lines, and every block of a .txt file)

Instruction records and conversations become dialogues (prompt pieces untrained, every assistant turn
trained and closed by EOS); WuDao and raw text become documents (every token trained).
"""
import re
from dataclasses import dataclass

from data.records import DataError, Record
from data.templates import PromptTemplate

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "chatgpt", "moss"}
SYSTEM_ROLES = {"system"}
MOSS_MARKUP = re.compile(r"^<\|(Human|MOSS)\|>:\s?|<(eoh|eom)>\s*$")


@dataclass(frozen=True)
class Example:
    """`pieces`: (text, trained) in order. A dialogue alternates prompt pieces (untrained) and responses
    (trained, each followed by EOS) and ends with a response; a document is one trained piece."""
    pieces: tuple[tuple[str, bool], ...]
    document: bool = False


def to_example(record: Record, template: PromptTemplate) -> Example:
    data = record.data
    if isinstance(data, list):
        return _coig_rounds(record, data, template)
    for keys, convert in CONVERTERS:
        if keys & data.keys():
            return convert(record, template)
    raise DataError(record.source, record.line, f"unrecognised record with keys {sorted(data)}; expected alpaca "
                    "(instruction/output), COIG (inputs/targets), conversations, messages, chat (MOSS), "
                    "title/content (WuDao) or text", kind="unrecognised record")


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


def _alpaca(record: Record, template: PromptTemplate) -> Example:
    data = record.data
    instruction = _field(record, data, "instruction", (str, list))
    if isinstance(instruction, list):
        if not all(isinstance(part, str) for part in instruction):
            raise DataError(record.source, record.line, "field 'instruction' is a list with non-string items",
                            kind="wrong type")
        instruction = "\n".join(instruction)
    input_text = _field(record, data, "input", required=False) or ""
    output = _response(record, _field(record, data, "output"), "output")
    return Example(((template.format(instruction, input_text), False), (output, True)))


def _coig(record: Record, template: PromptTemplate) -> Example:
    inputs = _field(record, record.data, "inputs")
    targets = _response(record, _field(record, record.data, "targets"), "targets")
    return Example(((template.format(inputs), False), (targets, True)))


def _coig_rounds(record: Record, rounds: list, template: PromptTemplate) -> Example:
    turns = []
    for number, item in enumerate(rounds, start=1):
        if not isinstance(item, dict):
            raise DataError(record.source, record.line, f"round {number} is {type(item).__name__}, expected an "
                            "object with inputs/targets", kind="wrong type")
        turns += [("user", _field(record, item, "inputs")), ("assistant", _field(record, item, "targets"))]
    return _dialogue(record, turns, template)


def _role_list(record: Record, list_key: str, role_key: str, text_key: str, template: PromptTemplate) -> Example:
    turns = []
    for number, turn in enumerate(_field(record, record.data, list_key, list), start=1):
        if not isinstance(turn, dict):
            raise DataError(record.source, record.line, f"{list_key}[{number}] is {type(turn).__name__}, expected "
                            "an object", kind="wrong type")
        turns.append((_field(record, turn, role_key), _field(record, turn, text_key)))
    return _dialogue(record, turns, template)


def _sharegpt(record: Record, template: PromptTemplate) -> Example:
    return _role_list(record, "conversations", "from", "value", template)


def _messages(record: Record, template: PromptTemplate) -> Example:
    return _role_list(record, "messages", "role", "content", template)


def _moss(record: Record, template: PromptTemplate) -> Example:
    chat = _field(record, record.data, "chat", dict)
    system = _field(record, record.data, "meta_instruction", required=False)
    turns = [("system", system)] if system and system.strip() else []
    for name in sorted(chat, key=lambda k: int(re.sub(r"\D", "", k) or 0)):
        turn = _field(record, chat, name, dict)
        turns += [("user", MOSS_MARKUP.sub("", _field(record, turn, "Human"))),
                  ("assistant", MOSS_MARKUP.sub("", _field(record, turn, "MOSS")))]
    return _dialogue(record, turns, template)


def _dialogue(record: Record, turns: list[tuple[str, str]], template: PromptTemplate) -> Example:
    """Role-tagged turns → prompt/response pieces. The context before the first answer opens with the
    system text (the record's leading system turn, else the template's); consecutive context turns merge
    into one prompt; user turns after the last assistant turn carry no loss and are left out."""
    system, pieces, prompt = template.system, [], None
    for role, text in turns:
        role = role.lower()
        if role in SYSTEM_ROLES and prompt is None and not pieces:
            system = text
            continue
        if prompt is None:
            prompt = "" if pieces else system
        if role in SYSTEM_ROLES:
            prompt += text
        elif role in USER_ROLES:
            prompt += template.user_turn(text)
        elif role in ASSISTANT_ROLES:
            response = _response(record, text, f"assistant turn {len(pieces) // 2 + 1}")
            pieces += [(prompt if pieces else prompt.lstrip("\n"), False), (response, True)]
            prompt = None
        else:
            raise DataError(record.source, record.line, f"unknown role {role!r}; expected one of "
                            f"{sorted(USER_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES)}", kind="unknown role")
    if not pieces:
        raise DataError(record.source, record.line, "empty response (no assistant turn)", kind="empty response")
    return Example(tuple(pieces))


def _document(record: Record, text: str) -> Example:
    if not text.strip():
        raise DataError(record.source, record.line, "empty text", kind="empty text")
    return Example(((text, True),), document=True)


def _wudao(record: Record, template: PromptTemplate) -> Example:
    title = _field(record, record.data, "title", required=False) or ""
    content = _field(record, record.data, "content")
    return _document(record, f"{title}\n{content}" if title.strip() and content.strip() else content)


def _text(record: Record, template: PromptTemplate) -> Example:
    return _document(record, _field(record, record.data, "text"))


CONVERTERS = [({"instruction", "output"}, _alpaca), ({"inputs", "targets"}, _coig), ({"conversations"}, _sharegpt),
              ({"messages"}, _messages), ({"chat"}, _moss), ({"content", "title"}, _wudao), ({"text"}, _text)]
