"""Conversations rendered with the tokenizer's own chat template (`template: chat`), with an exact loss
mask: the assistant turns as the template writes them, their end-of-turn included, and nothing else.

Two ways to find the assistant tokens, both checked against the rendered text:
- a template with `{% generation %}` markers: transformers' `return_assistant_tokens_mask`;
- any other template: the text rendered for the conversation up to each assistant turn (with the
  generation prompt) and up to its end must be prefixes of the whole rendering; the characters in
  between are that turn. Tokens of the whole rendering (tokenized once, with offsets) are trained by the
  boundary rule of `trained_tokens`. A template that rewrites earlier turns (no prefix property) is refused.
An assistant message with `tool_calls` whose rendered turn does not contain every call's function name
(Llama-3's and Llama-2's templates write only `content`) is refused: it would train an empty turn.
"""
import re

from data.records import DataError
from general_util.errors import ConfigError

GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


def _render(tokenizer, messages, tools, **kwargs) -> str:
    from jinja2 import TemplateError
    try:
        return tokenizer.apply_chat_template(list(messages), tools=tools, tokenize=False, **kwargs)
    except TemplateError as error:  # the template's own raise_exception (e.g. roles that must alternate)
        raise DataError("", None, f"the chat template refuses the conversation: {error}",
                        kind="chat template error") from None


def check_chat_template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError("template=chat: the tokenizer has no chat_template (tokenizer_config.json or "
                          "chat_template.jinja of the model folder); pick a text template (zh, en, none, panda)")
    if not tokenizer.is_fast:
        raise ConfigError("template=chat needs a fast tokenizer (character offsets of the tokens)")
    return template


def assistant_spans(tokenizer, messages, tools) -> tuple[str, list[tuple[int, int]]]:
    """The whole rendering and the character span of every assistant turn in it."""
    text = _render(tokenizer, messages, tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], tools, add_generation_prompt=True) if index else ""
        through = _render(tokenizer, messages[:index + 1], tools)
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError("", None, f"the chat template does not render message {index + 1} as a prefix of "
                            "the whole conversation (it rewrites earlier turns); add {% generation %} markers to "
                            "it or use a text template", kind="chat template not prefix-stable")
        if len(through) == len(before):
            raise DataError("", None, f"the chat template writes nothing for assistant message {index + 1}",
                            kind="empty response")
        check_tool_calls_rendered(message, index, through[len(before):])
        spans.append((len(before), len(through)))
    return text, spans


def check_tool_calls_rendered(message: dict, index: int, rendered: str) -> None:
    """Refuse a template that leaves an assistant message's tool calls out of `rendered` (its turn)."""
    names = [(call.get("function") or call).get("name", "") for call in message.get("tool_calls") or ()]
    dropped = [name for name in names if name not in rendered]
    if dropped:
        raise DataError("", None, f"the chat template drops the tool_calls of assistant message {index + 1} "
                        f"({dropped[0]!r} is not rendered): use a template that renders tool_calls, or a text "
                        "template", kind="chat template drops tool_calls")


def trained_tokens(offsets, spans) -> list[bool]:
    """THE BOUNDARY RULE (text templates and chat templates alike): a token is trained when any of its
    characters lies in a trained span [start, end). A token straddling a prompt/response boundary therefore
    belongs to the response: every response character is predicted, and the prompt the model conditions on
    is made of prompt characters only. A zero-width token is trained when it sits inside a span."""
    return [any(begin < end and finish > start if finish > begin else start <= begin < end for start, end in spans)
            for begin, finish in offsets]


def render_chat(tokenizer, messages: tuple[dict, ...], tools: list | None) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it is trained."""
    template = check_chat_template(tokenizer)
    if GENERATION_MARKER.search(template):
        text = _render(tokenizer, messages, tools)
        for index, message in enumerate(messages):
            check_tool_calls_rendered(message, index, text)
        encoded = tokenizer.apply_chat_template(list(messages), tools=tools, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        return list(encoded["input_ids"]), [bool(m) for m in encoded["assistant_masks"]]
    text, spans = assistant_spans(tokenizer, messages, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), trained_tokens(encoded["offset_mapping"], spans)


def token_pieces(ids: list[int], trained: list[bool]) -> list[tuple[list[int], bool]]:
    """Runs of equally-trained tokens, without the untrained tail after the last trained token."""
    pieces: list[tuple[list[int], bool]] = []
    for token, flag in zip(ids, trained):
        if pieces and pieces[-1][1] == flag:
            pieces[-1][0].append(token)
        else:
            pieces.append(([token], flag))
    while pieces and not pieces[-1][1]:
        pieces.pop()
    return pieces
