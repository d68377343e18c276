"""Log-likelihood scoring: tokenization split (lm-eval's rule), batched scores against a plain forward pass,
and acc / acc_norm on hand-made score tables."""
import functools
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.benchmarks import LogiQAReader, MMLUReader, MultipleChoicePrompt
from modules import scoring
from modules.loss_impl import LossSettings
from modules.scoring import choose, encode_options, encode_pair, pack, score_requests
from post_processors.mc_metrics import multiple_choice_metrics
from post_processors.multiple_choice import MultipleChoiceEvaluator

TINY = "models/tiny_llama"
FULL = LossSettings()  # log-probs from the whole logits


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(TINY).eval()


def plain(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Written out independently: strip the context's trailing spaces onto the continuation, encode the whole
    text once, score its tail beyond the context's tokens with one unpadded forward pass."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    context_ids = [tokenizer.bos_token_id] + plain(tokenizer, stripped)
    continuation_ids = plain(tokenizer, stripped + continuation)[len(context_ids) - 1:]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = 0.0
    for k, token in enumerate(continuation_ids):
        total += log_probs[len(context_ids) - 1 + k, token].item()
    return total


# ---- tokenization -----------------------------------------------------------------------------------
def test_trailing_spaces_of_the_context_move_to_the_continuation(tokenizer):
    moved = encode_pair(tokenizer, "Answer: ", "A")
    assert moved == encode_pair(tokenizer, "Answer:", " A")
    assert moved.context == [tokenizer.bos_token_id] + plain(tokenizer, "Answer:")
    assert moved.continuation == plain(tokenizer, " A") == [223, 35]  # "Ġ", "A": the space is scored
    several = encode_pair(tokenizer, "答案：\n  ", "北京")
    assert several.context == [tokenizer.bos_token_id] + plain(tokenizer, "答案：")
    assert several.continuation == plain(tokenizer, "答案：\n  北京")[len(plain(tokenizer, "答案：")):]


def test_continuation_is_the_tail_of_the_whole_encoding(tokenizer):
    # "Answe" | "r: Bob": encoded apart the pieces differ from the whole text ("er" merges across the cut)
    assert plain(tokenizer, "Answe") + plain(tokenizer, "r: Bob") != plain(tokenizer, "Answer: Bob")
    request = encode_pair(tokenizer, "Answe", "r: Bob")
    assert request.context == [tokenizer.bos_token_id] + plain(tokenizer, "Answe")
    assert request.continuation == plain(tokenizer, "Answer: Bob")[len(plain(tokenizer, "Answe")):]
    assert encode_pair(tokenizer, "Answer:", " B", add_bos=False).context == plain(tokenizer, "Answer:")


def test_empty_sides_are_refused(tokenizer):
    with pytest.raises(ValueError, match="the continuation has no tokens"):
        encode_pair(tokenizer, "Answer:", "")
    with pytest.raises(ValueError, match="set add_bos=true"):
        encode_pair(tokenizer, "", "B", add_bos=False)


# ---- batched scores equal the direct computation ----------------------------------------------------
def test_batched_scores_match_direct_computation(model, tokenizer):
    contexts = ["Question: who is the shortest?\nAnswer:", "答案：", "Answer: ", "hello"]
    continuations = [" Bob", " 北京", "It cannot be determined", " world and more words"]
    pairs = [(c, x) for c in contexts for x in continuations]
    sums, truncated = score_requests(model, [encode_pair(tokenizer, c, x) for c, x in pairs], 1024, torch.device("cpu"),
                                     FULL)
    assert not any(truncated)
    for (c, x), score in zip(pairs, sums):
        assert score == pytest.approx(direct_loglikelihood(model, tokenizer, c, x), abs=1e-5)


def test_options_sharing_a_prefix_share_a_row(model, tokenizer):
    context = "Question: which letter?\nAnswer:"
    requests = [encode_pair(tokenizer, context, f" {letter}") for letter in "ABCD"]
    batch = pack(requests, 1024)
    assert batch.input_ids.shape[0] == 1  # " A" and " D" are two tokens, " B" and " C" one: all prefixes of one row
    sums, _ = score_requests(model, requests, 1024, torch.device("cpu"), FULL)
    for letter, score in zip("ABCD", sums):
        assert score == pytest.approx(direct_loglikelihood(model, tokenizer, context, f" {letter}"), abs=1e-5)


def test_options_share_their_context_row_in_every_layout(model, tokenizer, monkeypatch):
    contexts = ["Question: who is the shortest?\nAnswer:", "答案：", "hello"]
    options = [" Bob", " It cannot be determined", " 北京", " A"]
    requests = [r for c in contexts for r in encode_options(tokenizer, c, options)]
    assert requests == [encode_pair(tokenizer, c, x) for c in contexts for x in options]
    assert pack(requests, 1024).input_ids.shape[0] == len(contexts)  # one row per context, options as branches
    direct = [direct_loglikelihood(model, tokenizer, c, x) for c in contexts for x in options]
    eager = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation="eager").eval()  # additive mask path
    for scorer in (model, eager):
        assert score_requests(scorer, requests, 1024, torch.device("cpu"), FULL)[0] == pytest.approx(direct, abs=1e-5)
    # a short max_length: branches overflow into more rows of the same context, long requests are cut (own rows)
    tight = max(len(r.context) for r in requests) + 4
    assert pack(requests, tight).input_ids.shape[0] > len(contexts)
    shared, cut = score_requests(model, requests, tight, torch.device("cpu"), FULL)
    monkeypatch.setattr(scoring, "SHARED_CONTEXT_ATTENTION", ())  # e.g. flash attention: flat rows, no mask
    assert pack(requests, tight, shared_context=False).segments.max() == 0
    flat, flat_cut = score_requests(model, requests, tight, torch.device("cpu"), FULL)
    assert any(cut) and cut == flat_cut and shared == pytest.approx(flat, abs=1e-5)


def test_long_inputs_are_cut_from_the_left(model, tokenizer):
    request = encode_pair(tokenizer, "one two three four five six seven eight nine ten", " eleven")
    keep = 6
    (score,), (truncated,) = score_requests(model, [request], keep, torch.device("cpu"), FULL)
    assert truncated
    ids = (request.context + request.continuation)[-(keep + 1):]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0], dim=-1)
    n = len(request.continuation)
    expected = sum(log_probs[keep - n + k, t].item() for k, t in enumerate(request.continuation))
    assert score == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="exceeds max_seq_length=1"):
        pack([request], 1)


@pytest.mark.parametrize("reader, data_dir, prompt", [
    (functools.partial(LogiQAReader, language="zh"), "data/samples/logiqa_v2", MultipleChoicePrompt("zh", num_shots=1)),
    (MMLUReader, "data/samples/mmlu", MultipleChoicePrompt("en", num_shots=2, answer_format="letter")),
])
def test_evaluator_scores_match_direct_computation(tmp_path, model, tokenizer, reader, data_dir, prompt):
    evaluator = MultipleChoiceEvaluator("t", reader, prompt, batch_size=2, data_dir=data_dir, limit=5)
    metrics = evaluator(model, tokenizer, tmp_path, FULL)
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [p["index"] for p in predictions] == list(range(5))
    for p in predictions:
        direct = [direct_loglikelihood(model, tokenizer, p["prompt"], c) for c in p["continuations"]]
        assert p["scores"]["loglikelihood"] == pytest.approx(direct, abs=1e-5)
        assert p["prediction"] == max(range(len(direct)), key=direct.__getitem__)
    assert metrics["acc"] == sum(p["prediction"] == p["gold"] for p in predictions) / 5


# ---- choices and metrics on hand-made tables --------------------------------------------------------
def test_acc_and_acc_norm_choices():
    # sums -10, -12, -9.5, -20 over 10, 24, 3, 40 characters: per char -1.0, -0.5, -3.17, -0.5
    assert choose([-10.0, -12.0, -9.5, -20.0], [10, 24, 3, 40]) == (2, 1)  # ties go to the first
    assert choose([-3.0, -3.0], [1, 1]) == (0, 0)


def test_metrics_from_a_score_table():
    table = [  # sums, answer characters, gold, subject, category
        ([-1.0, -2.0, -3.0, -4.0], [1, 1, 1, 1], 0, "a", "STEM"),       # acc 0 ✓, norm 0 ✓
        ([-4.0, -6.0, -9.0, -9.0], [2, 6, 9, 9], 2, "a", "STEM"),       # acc 0 ✗, norm -2,-1,-1,-1 → 1 ✗
        ([-8.0, -2.0, -9.0, -9.0], [8, 1, 1, 1], 0, "b", "other"),      # acc 1 ✗, norm -1,-2,-9,-9 → 0 ✓
        ([-5.0, -1.0, -9.0, -9.0], [1, 1, 1, 1], None, "b", "other"),   # unlabelled: not in the accuracies
    ]
    predictions = []
    for sums, chars, gold, subject, category in table:
        acc, norm = choose(sums, chars)
        predictions.append({"gold": gold, "prediction": acc, "truncated": False, "subject": subject, "category": category,
                            "correct": None if gold is None else acc == gold,
                            "correct_norm": None if gold is None else norm == gold})
    metrics = multiple_choice_metrics(predictions)
    assert metrics["n"] == 4 and metrics["labelled"] == 3 and metrics["truncated"] == 0
    assert metrics["acc"] == pytest.approx(1 / 3)
    assert metrics["acc_norm"] == pytest.approx(2 / 3)
    assert metrics["subject/a/acc"] == 0.5 and metrics["subject/a/acc_norm"] == 0.5
    assert metrics["subject/b/acc"] == 0.0 and metrics["subject/b/acc_norm"] == 1.0
    assert metrics["category/STEM/acc"] == 0.5 and metrics["category/other/acc_norm"] == 1.0
    assert "unparsable" not in metrics


def token_logprob_sum(model, ids: list[int], continuation: list[int]) -> float:
    """Summed log-prob of the last len(continuation) tokens of `ids`, one unpadded forward pass."""
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].double(), dim=-1)
    start = len(ids) - 1 - len(continuation)
    return sum(log_probs[start + k, token].item() for k, token in enumerate(continuation))


def test_shared_truncation_cuts_the_context_once_for_the_longest_option(model, tokenizer):
    context = encode_options(tokenizer, "很长的文章。" * 12 + "\n答案：", [" 甲", " 乙丙丁戊己庚", " 辛"])
    max_length = 24
    longest = max(len(r.continuation) for r in context)
    lm_eval_sums, lm_eval_cut = score_requests(model, context, max_length, torch.device("cpu"), FULL)
    shared_sums, shared_cut = score_requests(model, context, max_length, torch.device("cpu"), FULL, truncation="shared")
    assert all(lm_eval_cut) and all(shared_cut)
    for request, theirs, ours in zip(context, lm_eval_sums, shared_sums):
        whole = request.context + request.continuation
        # lm-eval: each request's (context + continuation) cut to max_length + 1 tokens on its own
        assert theirs == pytest.approx(token_logprob_sum(model, whole[-(max_length + 1):], request.continuation), abs=1e-5)
        # shared: the same context tail for every option, as long as the longest option leaves
        cut = request.context[-(max_length + 1 - longest):] + request.continuation
        assert ours == pytest.approx(token_logprob_sum(model, cut, request.continuation), abs=1e-5)
    assert pack(context, max_length, truncation="shared").input_ids.shape[0] == 1  # one row for all options
    assert pack(context, max_length).input_ids.shape[0] == 3


@pytest.mark.parametrize("text", ["长篇的对话，男：你好！女：你好。" * 90 + "\n答案：", "A long passage, said he. " * 200 + "\nAnswer:"])
def test_long_contexts_are_encoded_from_their_tail_exactly(tokenizer, text):
    """Only the context's last tokens are read (keep_tokens), and the continuations of a long context are
    encoded after its tail: both must be token for token what encoding the whole texts gives."""
    continuations = [" 坐地铁", " 走路。", " B"]
    whole = encode_options(tokenizer, text, continuations)
    tail = encode_options(tokenizer, text, continuations, keep_tokens=300)
    stripped = text.rstrip()
    context_ids = plain(tokenizer, stripped)
    for w, t, continuation in zip(whole, tail, continuations):
        brute = plain(tokenizer, text + continuation)[len(context_ids):]
        assert w.continuation == t.continuation == brute
        assert len(t.context) >= 300 and w.context[-len(t.context):] == t.context
