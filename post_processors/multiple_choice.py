"""Multiple-choice benchmark evaluation (LogiQA 2.0, C3, ReClor, MMLU), by option log-likelihood or by
generating an answer, on one rank or many.

Every rank scores a contiguous share of the items (no duplicates, unlike DistributedSampler). All ranks
make the same number of model calls — ZeRO-3 gathers parameters inside forward, so a rank that stopped
early would hang the others: the batch count is agreed by an all-reduce MAX and a rank with fewer
batches repeats one whose results it discards (`post_processors.gathering.evaluate_in_lockstep`). The
predictions are gathered on every rank, checked to hold exactly one per item, and scored there, so every
rank returns the same metrics; global rank 0 writes the files (see `post_processors.prediction_files`).
"""
import functools
from pathlib import Path

from general_util.dist import current
from general_util.errors import ConfigError
from modules.generation import DEFAULT_GENERATION, generate_continuations, needs_synced_generation
from modules.loss_impl import LossSettings
from modules.scoring import TRUNCATIONS, choose, encode_options, score_requests
from post_processors.answer_extraction import check_rule, extract_choice
from post_processors.gathering import evaluate_in_lockstep, merge_by_index
from post_processors.mc_metrics import multiple_choice_metrics
from post_processors.prediction_files import write_outputs, write_prediction_indices

SCORINGS = ("loglikelihood", "generate")
PROMPT_TRUNCATIONS = ("left", "right")
ANSWER_SOURCES = ("generation", "prompt_and_generation")


class MultipleChoiceEvaluator:
    """`reader`: a callable taking `data_dir=` and returning a benchmark reader (a `_partial_: true` node
    in YAML), e.g. `data.benchmarks.LogiQAReader`. `prompt`: a `data.benchmarks.MultipleChoicePrompt`.
    `batch_size`: items per model call (log-likelihood: each item adds one row per option, fewer where
    options share a prefix). `max_seq_length`: longer prompts lose tokens from the left (counted in the
    metric `truncated`); None: the model's context length. `truncation`: how a long item is cut for
    log-likelihood scoring, `lm_eval` (exactly as lm-evaluation-harness) or `shared` (the context cut once,
    all options in one row: faster; see modules/scoring.py). `generation`: keyword arguments of `generate` (scoring `generate`), over
    `modules.generation.DEFAULT_GENERATION`. `answer_trigger`, `answer_position`, `letter_match`: how the
    letter is read from a generation (post_processors/answer_extraction.py). `npy_file`: also write the
    predicted option indices in item order to this file (`npy_unparsable` for an answer without a letter), as
    the original evaluation did (`decode_results.npy`, 0). `limit`: evaluate only the first N items (quick
    checks). The original PandaLLM protocol's options (generation): `prompt_truncation` `left` keeps a long
    prompt's last max_seq_length − max_new_tokens tokens, `right` its first max_seq_length (BOS included: the
    tokenizer's default truncation, as the original collator); `suppress_eos` removes the EOS logit, so the
    model never stops early (the original's LlamaForConditionalGeneration, "omit the eos token logits");
    `answer_source` `prompt_and_generation` reads the letter from the decoded prompt + generation, as the
    original did where it kept the input. The files are read here, so a bad record stops the run before
    training starts."""

    def __init__(self, name: str, reader, prompt, scoring: str = "loglikelihood", batch_size: int = 8,
                 max_seq_length: int | None = None, generation: dict | None = None, *, data_dir: str | Path,
                 truncation: str = "lm_eval",
                 answer_trigger: str | None = None, answer_position: str = "first", letter_match: str = "standalone",
                 add_bos: bool = True, limit: int | None = None, npy_file: str | None = None,
                 npy_unparsable: int = -1, prompt_truncation: str = "left", suppress_eos: bool = False,
                 answer_source: str = "generation"):
        check_rule(letter_match, answer_position)
        for key, value, allowed in (("prompt_truncation", prompt_truncation, PROMPT_TRUNCATIONS),
                                    ("answer_source", answer_source, ANSWER_SOURCES)):
            if value not in allowed:
                raise ConfigError(f"evaluator {name}: {key}={value!r}; use one of {', '.join(allowed)}")
        if scoring not in SCORINGS:
            raise ConfigError(f"evaluator {name}: scoring={scoring!r}; use one of {', '.join(SCORINGS)}")
        if scoring == "generate" and prompt.answer_format != "letter":
            raise ConfigError(f"evaluator {name}: scoring=generate reads an option letter; set the prompt's "
                             f"answer_format=letter so the exemplars answer with letters too")
        self.generation = {**DEFAULT_GENERATION, **dict(generation or {})}
        if scoring == "generate" and max_seq_length and self.generation["max_new_tokens"] >= max_seq_length:
            raise ConfigError(f"evaluator {name}: max_new_tokens={self.generation['max_new_tokens']} leaves no room "
                             f"for the prompt in max_seq_length={max_seq_length}")
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"evaluator {name}: truncation={truncation!r}; use one of {', '.join(TRUNCATIONS)}")
        self.truncation = truncation
        if batch_size < 1:
            raise ConfigError(f"evaluator {name}: batch_size={batch_size}; must be ≥ 1")
        self.name, self.prompt, self.scoring = name, prompt, scoring
        self.batch_size, self.max_seq_length = batch_size, max_seq_length
        self.answer_trigger, self.add_bos = answer_trigger, add_bos
        self.answer_position, self.letter_match = answer_position, letter_match
        self.npy_file, self.npy_unparsable = npy_file, npy_unparsable
        self.prompt_truncation, self.suppress_eos, self.answer_source = prompt_truncation, suppress_eos, answer_source
        source = reader(data_dir=data_dir)
        self.write_submission = getattr(source, "write_submission", None)  # a leaderboard's own file (C-Eval)
        self.items = source.items()[:limit]
        if not self.items:
            raise ConfigError(f"evaluator {name}: no items in {data_dir}")
        self.prompts = prompt.render(self.items, source.exemplars() if prompt.num_shots else [])

    def metric_names(self) -> list[str]:
        """What each call reports, from the items alone (before any model is loaded): the metrics of predictions
        of the right shape, so that an unlabelled split (a leaderboard's test set) reports no accuracy here
        either."""
        placeholders = []
        for i, item in enumerate(self.items):
            record = {**self._record(i, False), "prediction": 0, "correct": None if item.gold is None else False}
            if self.scoring == "loglikelihood":
                record["correct_norm"] = record["correct"]
            else:
                record["generation"] = ""
            placeholders.append(record)
        return list(multiple_choice_metrics(placeholders))

    def __call__(self, model, tokenizer, output_dir: str | Path, loss: LossSettings) -> dict[str, float]:
        ctx = current()
        if self.max_seq_length is None:  # the model's context length
            config = getattr(getattr(model, "module", model), "config")
            self.max_seq_length = config.max_position_embeddings
        if self.scoring == "loglikelihood":
            length, run = self._loglikelihood(model, tokenizer, ctx.device, loss)
        else:
            length, run = self._generate(model, tokenizer, ctx.device, needs_synced_generation(model, ctx.world_size))
        predictions = merge_by_index(evaluate_in_lockstep(range(len(self.items)), run, self.batch_size,
                                                          f"eval {self.name}", length), len(self.items))
        metrics = multiple_choice_metrics(predictions)
        if ctx.is_main:
            write_outputs(output_dir, predictions, metrics)
            if self.npy_file:
                write_prediction_indices(Path(output_dir) / self.npy_file, predictions, self.npy_unparsable)
            if self.write_submission and all(p["gold"] is None for p in predictions):
                self.write_submission(output_dir, predictions)
        return metrics

    # ---- scoring ------------------------------------------------------------------------------------
    # each scoring gives (length of an item, run over a batch of items) for evaluate_in_lockstep
    def _loglikelihood(self, model, tokenizer, device, loss: LossSettings):
        @functools.cache
        def encode(i: int) -> list:
            return encode_options(tokenizer, self.prompts[i], self.prompt.continuations(self.items[i]), self.add_bos,
                                  keep_tokens=self.max_seq_length + 1)

        def length(i: int) -> int:
            return max(len(r.context) + len(r.continuation) for r in encode(i))

        def run(indices: list[int]) -> list[dict]:
            per_item = [encode(i) for i in indices]
            sums, truncated = score_requests(model, [r for item in per_item for r in item], self.max_seq_length, device,
                                             loss, self.truncation)
            out, at = [], 0
            for i, item_requests in zip(indices, per_item):
                n = len(item_requests)
                out.append(self._scored(i, sums[at:at + n], any(truncated[at:at + n])))
                at += n
            return out

        return length, run

    def _generate(self, model, tokenizer, device, synced_gpus: bool):
        right = self.prompt_truncation == "right"
        room = self.max_seq_length - (0 if right else self.generation["max_new_tokens"])
        bos = [tokenizer.bos_token_id] if self.add_bos and tokenizer.bos_token_id is not None else []
        generation = dict(self.generation)
        if self.suppress_eos and tokenizer.eos_token_id is not None:
            generation["suppress_tokens"] = [*(generation.get("suppress_tokens") or ()), tokenizer.eos_token_id]

        @functools.cache
        def encode(i: int) -> list[int]:
            return bos + tokenizer(self.prompts[i], add_special_tokens=False)["input_ids"]

        def run(indices: list[int]) -> list[dict]:
            ids = [encode(i) for i in indices]
            texts = generate_continuations(model, tokenizer, [x[:room] if right else x[-room:] for x in ids],
                                           generation, device, synced_gpus,
                                           with_prompt=self.answer_source == "prompt_and_generation")
            return [self._generated(i, text, len(x) > room) for i, text, x in zip(indices, texts, ids)]

        return lambda i: len(encode(i)), run

    # ---- prediction records -------------------------------------------------------------------------
    def _record(self, i: int, truncated: bool) -> dict:
        item = self.items[i]
        record = {"index": i, "id": item.id, "source": item.location, "prompt": self.prompts[i],
                  "options": list(item.options), "gold": item.gold, "truncated": truncated}
        if item.subject is not None:
            record.update(subject=item.subject, category=item.category)
        return record

    def _scored(self, i: int, sums: list[float], truncated: bool) -> dict:
        item = self.items[i]
        answer_chars = [len(answer) for answer in self.prompt.answers(item)]
        prediction, prediction_norm = choose(sums, answer_chars)
        labelled = item.gold is not None
        return {**self._record(i, truncated),
                "continuations": self.prompt.continuations(item),
                "scores": {"loglikelihood": sums, "per_char": [s / n for s, n in zip(sums, answer_chars)]},
                "prediction": prediction, "prediction_norm": prediction_norm,
                "correct": prediction == item.gold if labelled else None,
                "correct_norm": prediction_norm == item.gold if labelled else None}

    def _generated(self, i: int, text: str, truncated: bool) -> dict:
        item = self.items[i]
        with_prompt = self.answer_source == "prompt_and_generation"  # the trigger is then found in the text itself
        prediction = extract_choice(text, len(item.options), self.answer_trigger, self.answer_position,
                                    self.letter_match, "" if with_prompt else self.prompts[i])
        return {**self._record(i, truncated), "generation": text, "prediction": prediction,
                "correct": prediction == item.gold if item.gold is not None else None}
