"""Canonical token sequences (issue 27 requirement 1, issue 29 requirement 3): for every tokenizer kind
(tests/tokenizer_kinds.py: real SentencePiece LLaMA-2 with legacy true/false, Chinese-LLaMA-2, the tiny BPE,
tiktoken-converted Llama-3), template and record layout, a sample's input_ids are the tokenizer's own encoding
of the sample's whole rendered text, and the trained tokens are exactly those holding trained characters
(the boundary rule of data/chat.py `trained_tokens`). The panda template follows the original recipes' rule
(dandelionsllm/pandallm@4a47ecd data/collators/flan.py `vanilla_seq2seq_convertor`), written out here.

The data: the bundled samples (data/samples), the real-layout fixtures (tests/fixtures/data: LLaMA-Factory's
alpaca and glaive tool-call demos, OpenAI tool calls, MOSS, COIG rounds)."""
import json
from pathlib import Path

import pytest

from data.cache import CACHE_VERSION, BuildSettings, cache_key
from data.datasets import TokenizedDataset
from data.formats import RecordOptions, to_examples
from data.readers import read_records
from data.records import DataError
from data.templates import get_template
from data.tokenization import ExampleTokenizer
from tests import tokenizer_kinds
from tests.tokenizer_kinds import CHAT_TEMPLATES, KINDS, REPO

SAMPLES, FIXTURES = REPO / "data" / "samples", REPO / "tests" / "fixtures" / "data"
LAYOUTS = {  # layout -> (files, record options)
    "alpaca": ([SAMPLES / "alpaca_zh_en_train.jsonl", FIXTURES / "llama_factory" / "alpaca_zh_demo_first40.json",
                FIXTURES / "llama_factory" / "alpaca_en_demo_first40.json"], RecordOptions()),
    "sharegpt": ([SAMPLES / "sharegpt_sample.json"], RecordOptions()),
    "messages": ([FIXTURES / "openai_tools.jsonl"], RecordOptions()),
    "moss": ([SAMPLES / "moss_sample.jsonl", *sorted((FIXTURES / "moss").glob("*.json"))], RecordOptions()),
    "tool_calls": ([FIXTURES / "glaive_toolcall_zh_demo.json"], RecordOptions()),
    "coig_rounds": ([SAMPLES / "coig_sample.json", FIXTURES / "panda_mixed" / "coig" / "coig_data.json"],
                    RecordOptions(coig_rounds="per_round")),
}
CUSTOM = {"preset": "none", "system": "You are helpful.", "user": "<|user|>\n{message}\n<|assistant|>\n",
          "assistant_suffix": "\n", "separator": "\n"}
TEMPLATES = {"zh": "zh", "en": "en", "panda": "panda", "custom": CUSTOM, "chat": "chat"}
ALL_KINDS = list(KINDS)


@pytest.fixture(scope="module", params=ALL_KINDS)
def kind(request):
    tokenizer = tokenizer_kinds.tokenizer(request.param)
    if not tokenizer.chat_template:  # the real Llama-2-chat template (tests/fixtures/chat_templates)
        tokenizer.chat_template = (CHAT_TEMPLATES / "llama2_chat.jinja").read_text(encoding="utf-8")
    return request.param, tokenizer


def examples_of(layout: str, template):
    files, options = LAYOUTS[layout]
    for path in files:
        for record in read_records(Path(path)):
            try:
                yield record, to_examples(record, template, options)
            except DataError:  # the fixtures' deliberately bad records (e.g. an image part) are no samples
                continue


def trained_characters(example, eos: str) -> tuple[str, set[int]]:
    """The rendered text of a text-template dialogue and its trained character positions, written out."""
    text, trained = "", set()
    for piece, is_trained in example.pieces:
        piece += eos if is_trained else ""
        if is_trained:
            trained |= set(range(len(text), len(text) + len(piece)))
        text += piece
    return text, trained


def chat_characters(tokenizer, example) -> tuple[str, set[int]]:
    messages = list(example.messages)
    text = tokenizer.apply_chat_template(messages, tools=example.tools, tokenize=False)
    trained = set()
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            before = tokenizer.apply_chat_template(messages[:index], tools=example.tools, tokenize=False,
                                                   add_generation_prompt=True) if index else ""
            through = tokenizer.apply_chat_template(messages[:index + 1], tools=example.tools, tokenize=False)
            trained |= set(range(len(before), len(through)))
    return text, trained


def original_panda_labels(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """dandelionsllm/pandallm@4a47ecd data/collators/flan.py vanilla_seq2seq_convertor (decoder_only): the
    whole string `prompt + " " + response + eos` encoded once, its first len(tokenizer(prompt)) positions masked."""
    ids = tokenizer(prompt + " " + response + tokenizer.eos_token)["input_ids"]
    masked = len(tokenizer(prompt)["input_ids"])
    return ids, [-100] * masked + ids[masked:]


def labels_of(segment) -> list[int]:
    return [int(t) if trained else -100 for t, trained in zip(segment.input_ids, segment.trained)]


@pytest.mark.parametrize("template_name", list(TEMPLATES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ids_are_the_whole_text_encoding_and_labels_its_trained_characters(kind, template_name, layout):
    kind_name, tokenizer = kind
    template = get_template(TEMPLATES[template_name])
    encoder = ExampleTokenizer(tokenizer, max_seq_length=1 << 20)
    checked = refused = 0
    for record, examples in examples_of(layout, template):
        for example, result in zip(examples, encoder(examples)):
            if example.document:
                continue
            if result.error is not None:  # a chat template that cannot render the conversation: one line, counted
                assert template_name == "chat" and "\n" not in str(result.error)
                refused += 1
                continue
            [segment] = result.segments
            if example.messages:
                text, trained_chars = chat_characters(tokenizer, example)
                expected = tokenizer(text, add_special_tokens=False)
            else:
                text, trained_chars = trained_characters(example, tokenizer.eos_token)
                expected = tokenizer(text)  # BOS as the tokenizer adds it
            assert list(segment.input_ids) == expected["input_ids"], (kind_name, record.line)
            offsets = tokenizer(text, add_special_tokens=not example.messages, return_offsets_mapping=True)["offset_mapping"]
            for (begin, end), trained in zip(offsets, segment.trained):
                characters = set(range(begin, end))
                if example.label_boundary == "characters" and end > begin:
                    assert trained == bool(characters & trained_chars), (kind_name, record.line, text[begin:end])
            covered = set().union(*(set(range(b, e)) for (b, e), t in zip(offsets, segment.trained) if t))
            assert trained_chars <= covered  # every response character (and EOS) is predicted
            if example.label_boundary == "prompt_length" and len(example.pieces) == 2:
                prompt, response = example.pieces[0][0].removesuffix(" "), example.pieces[1][0]
                ids, labels = original_panda_labels(tokenizer, prompt, response)
                assert (list(segment.input_ids), labels_of(segment)) == (ids, labels), (kind_name, record.line)
            checked += 1
    assert checked or refused
    if template_name != "chat":
        assert refused == 0


def test_the_straddling_token_goes_to_the_response():
    """Llama-3 encodes `"? " + "My"` as `?` `ĠMy`: the token holding the prompt's space and the response's
    first word is trained (custom template whose prompt ends in a space)."""
    tokenizer = tokenizer_kinds.tokenizer("llama3")
    template = get_template({"preset": "none", "without_input": "Q: {instruction}? "})
    [example] = to_examples(next(iter(records_of({"instruction": "Who", "output": "My name"}))), template)
    [segment] = ExampleTokenizer(tokenizer, 64)([example])[0].segments
    tokens = tokenizer.convert_ids_to_tokens([int(t) for t in segment.input_ids])
    trained = [t for t, flag in zip(tokens, segment.trained) if flag]
    assert tokens == ["<|begin_of_text|>", "Q", ":", "ĠWho", "?", "ĠMy", "Ġname", "<|end_of_text|>"]
    assert trained == ["ĠMy", "Ġname", "<|end_of_text|>"]
    # the panda rule puts the same token on the same side: the prompt "Who" alone is 1 token after BOS
    panda = to_examples(next(iter(records_of({"instruction": "Who?", "output": "My name"}))), get_template("panda"))
    [segment] = ExampleTokenizer(tokenizer, 64)(panda)[0].segments
    tokens = tokenizer.convert_ids_to_tokens([int(t) for t in segment.input_ids])
    assert tokens == ["<|begin_of_text|>", "Who", "?", "ĠMy", "Ġname", "<|end_of_text|>"]
    assert [t for t, flag in zip(tokens, segment.trained) if flag] == ["ĠMy", "Ġname", "<|end_of_text|>"]


def records_of(*records):
    from data.records import Record
    return [Record(record, "inline.jsonl", number) for number, record in enumerate(records, 1)]


def test_sentencepiece_answers_start_without_the_dummy_prefix():
    """The issue's example: LLaMA-2 trains `### 回答：\\n30 plus 34` as `<0x0A> 3 0`, not `<0x0A> ▁ 3 0`."""
    for kind in ("llama2", "llama2_legacy", "chinese_llama2"):
        tokenizer = tokenizer_kinds.tokenizer(kind)
        [example] = to_examples(records_of({"instruction": "What is 30 plus 34?", "output": "30 plus 34 is 64."})[0],
                                get_template("zh"))
        [segment] = ExampleTokenizer(tokenizer, 256)([example])[0].segments
        tokens = tokenizer.convert_ids_to_tokens([int(t) for t in segment.input_ids])
        first = list(segment.trained).index(True)
        assert tokens[first - 1] == "<0x0A>" and tokens[first] == "3", (kind, tokens[first - 2:first + 2])
        assert tokens[-1] == "</s>" and segment.trained[-1]


@pytest.mark.parametrize("kind_name", ["tiny_bpe", "llama2"])
def test_panda_ids_and_labels_equal_the_original_rule_on_the_bundled_samples(tmp_path, kind_name):
    """Through the token cache: every single-turn sample of the bundled alpaca/COIG samples and the panda
    folder fixture, as the original collator makes it (issue 29 acceptance)."""
    tokenizer = tokenizer_kinds.tokenizer(kind_name)
    files = [SAMPLES / "alpaca_zh_en_train.jsonl", SAMPLES / "coig_sample.json",
             FIXTURES / "panda_mixed" / "instruct" / "belle_sample.json"]
    data = TokenizedDataset({"main": {"files": [str(f) for f in files]}}, tokenizer, template="panda",
                            max_seq_length=2048, cache_dir=str(tmp_path), on_bad_record="skip", coig_rounds="per_round")
    rows = [data[i] for i in range(len(data))]
    expected = []
    for path in files:
        for record in read_records(path):
            item = record.data
            if isinstance(item, list):  # COIG rounds: the original's history + "\n\n" + inputs per round
                for example in to_examples(record, get_template("panda"), RecordOptions(coig_rounds="per_round")):
                    expected.append(original_panda_labels(tokenizer, example.pieces[0][0].removesuffix(" "),
                                                          example.pieces[1][0]))
                continue
            if item.get("text") or not (item.get("output") or item.get("targets")):
                continue
            if "inputs" in item:
                prompt, response = item["inputs"], item["targets"]
            else:
                [example] = to_examples(record, get_template("panda"))  # the seeded pick of a list of instructions
                instruction = example.pieces[0][0].removesuffix(" ")
                instruction = instruction[:-len(" " + item["input"])] if "input" in item else instruction
                prompt = instruction + (" " + item["input"] if "input" in item else "")
                response = item["output"]
            expected.append(original_panda_labels(tokenizer, prompt, response))
    assert [(row["input_ids"], row["labels"]) for row in rows] == expected and len(expected) > 150


def test_dev_loss_packing_and_cache_use_the_same_tokens(tmp_path):
    """The dataset rows (what the dev-loss evaluator and training read), packed rows and a rebuilt cache
    carry the whole-text encoding; the cache key holds the tokenization version (old caches are rebuilt)."""
    tokenizer = tokenizer_kinds.tokenizer("llama2")
    files = str(SAMPLES / "alpaca_zh_en_dev.jsonl")
    plain = TokenizedDataset({"main": {"files": files}}, tokenizer, template="zh", max_seq_length=512,
                             cache_dir=str(tmp_path / "a"))
    packed = TokenizedDataset({"main": {"files": files}}, tokenizer, template="zh", max_seq_length=512,
                              cache_dir=str(tmp_path / "b"), packing=True)
    encoder = ExampleTokenizer(tokenizer, 512)
    expected = []
    for record in read_records(Path(files)):
        [example] = to_examples(record, get_template("zh"))
        text, _ = trained_characters(example, tokenizer.eos_token)
        expected.append(tokenizer(text)["input_ids"])
        [segment] = encoder([example])[0].segments
        assert list(segment.input_ids) == expected[-1]
    assert [plain[i]["input_ids"] for i in range(len(plain))] == expected
    unpacked = []
    for i in range(len(packed)):
        row = packed[i]
        start = 0
        for length in row["seq_lens"]:
            unpacked.append((row["input_ids"][start:start + length], row["labels"][start:start + length]))
            start += length
    assert sorted(unpacked) == sorted((plain[i]["input_ids"], plain[i]["labels"]) for i in range(len(plain)))
    settings = BuildSettings([Path(files)], tokenizer, get_template("zh"), 512, False, "error", 1 << 24, 1)
    inputs = settings.inputs()
    assert inputs["version"] == CACHE_VERSION >= 3
    assert cache_key({**inputs, "version": 2}) != cache_key(inputs)  # a cache of the piecewise encoding is not reused


@pytest.mark.parametrize("truncation", ["proportional", "context_first", "drop"])
def test_truncation_keeps_eos_on_whole_text_encodings(truncation):
    tokenizer = tokenizer_kinds.tokenizer("llama2")
    [example] = to_examples(records_of({"instruction": "问 " * 30, "output": "答 " * 60})[0], get_template("zh"))
    [result] = ExampleTokenizer(tokenizer, 48, truncation)([example])
    if truncation == "drop":
        assert result.dropped and result.truncated
        return
    [segment] = result.segments
    assert len(segment.input_ids) == 48 and segment.input_ids[0] == tokenizer.bos_token_id
    assert segment.input_ids[-1] == tokenizer.eos_token_id and segment.trained[-1]
    assert result.truncated and not segment.trained[0] and segment.trained.any()


def test_a_chat_template_that_drops_tool_calls_is_refused_in_one_line():
    tokenizer = tokenizer_kinds.tokenizer("llama3")  # Meta-Llama-3-8B-Instruct's template writes only `content`
    record = json.loads((FIXTURES / "openai_tools.jsonl").read_text(encoding="utf-8").splitlines()[0])
    record.pop("tools")
    [example] = to_examples(records_of(record)[0], get_template("chat"))
    [result] = ExampleTokenizer(tokenizer, 512)([example])
    assert result.dropped and "drops the tool_calls of assistant message 3 ('get_weather' is not rendered)" \
        in str(result.error)
    tokenizer.chat_template = (CHAT_TEMPLATES / "llama3_generation_markers.jinja").read_text(encoding="utf-8")
    [result] = ExampleTokenizer(tokenizer, 512)([example])  # the {% generation %} path checks it too
    assert result.dropped and "drops the tool_calls of assistant message 3" in str(result.error)
