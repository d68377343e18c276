"""Evaluation speed: items/s of log-likelihood scoring on the tiny model over the bundled LogiQA 2.0 dev
samples (zh + en, 30 items, 0-shot, option texts scored), three ways:

    one_option_per_forward  every (prompt, option) pair its own forward call (the naive loop)
    one_item_per_forward    MultipleChoiceEvaluator with batch_size=1 (an item's options in one call)
    batched                 MultipleChoiceEvaluator with batch_size=8 (8 items per call, sorted by length)

All three tokenize the same way and include tokenization; the evaluator runs also write their files.
The variants alternate within each repetition and speedups are taken within a repetition (shared CPUs
are noisy). The scores of the three must agree (max_abs_score_difference).

    python -m bench.eval_speed            # 5 repetitions
    python -m bench.eval_speed --quick    # 4 items, 1 repetition: checks the benchmark code (CI)
"""
import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path


import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.harness import REPO
from data.benchmarks import LogiQAReader, MultipleChoicePrompt
from modules.loss_impl import LossSettings
from modules.scoring import encode_pair, score_requests
from post_processors.multiple_choice import MultipleChoiceEvaluator

VARIANTS = ("one_option_per_forward", "one_item_per_forward", "batched")
MAX_SEQ_LENGTH = 1024
LOSS = LossSettings("full")  # log-probs from the whole logits, as lm-eval computes them


def logiqa_evaluators(limit: int | None, batch_size: int) -> list[MultipleChoiceEvaluator]:
    """Log-likelihood evaluators of the bundled LogiQA 2.0 dev samples, one per language (zh, en)."""
    return [MultipleChoiceEvaluator(f"logiqa_{language}", functools.partial(LogiQAReader, language=language),
                                    MultipleChoicePrompt(language), batch_size=batch_size, max_seq_length=MAX_SEQ_LENGTH,
                                    data_dir=REPO / "data" / "samples" / "logiqa_v2", limit=limit)
            for language in ("zh", "en")]


def evaluators(limit: int | None) -> dict[str, list[MultipleChoiceEvaluator]]:
    """Per variant, the evaluators of both languages."""
    return {variant: logiqa_evaluators(limit, batch_size)
            for batch_size, variant in ((1, "one_item_per_forward"), (8, "batched"))}


def run_evaluators(runs: list[MultipleChoiceEvaluator], model, tokenizer, workdir: Path) -> list[list[float]]:
    scores = []
    for evaluator in runs:
        evaluator(model, tokenizer, workdir / evaluator.name, LOSS)
        with open(workdir / evaluator.name / "predictions.jsonl", encoding="utf-8") as f:
            scores += [json.loads(line)["scores"]["loglikelihood"] for line in f]
    return scores


def one_option_per_forward(runs: list[MultipleChoiceEvaluator], model, tokenizer) -> list[list[float]]:
    scores = []
    for evaluator in runs:
        for item, prompt in zip(evaluator.items, evaluator.prompts):
            scores.append([score_requests(model, [encode_pair(tokenizer, prompt, continuation)], MAX_SEQ_LENGTH,
                                          torch.device("cpu"), LOSS)[0][0]
                           for continuation in evaluator.prompt.continuations(item)])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 items per language, one repetition")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    limit, repeats = (2, 1) if args.quick else (None, args.repeats)

    tokenizer = AutoTokenizer.from_pretrained(REPO / "models" / "tiny_llama")
    model = AutoModelForCausalLM.from_pretrained(REPO / "models" / "tiny_llama").eval()
    built = evaluators(limit)
    num_items = sum(len(e.items) for e in built["batched"])
    seconds = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as workdir:
        def run(variant: str) -> list[list[float]]:
            if variant == "one_option_per_forward":
                return one_option_per_forward(built["batched"], model, tokenizer)
            return run_evaluators(built[variant], model, tokenizer, Path(workdir) / variant)

        scores = {variant: run(variant) for variant in VARIANTS}  # warm-up, and the scores to compare
        for repeat in range(repeats):
            for variant in VARIANTS[repeat % 3:] + VARIANTS[:repeat % 3]:  # rotate the order
                start = time.perf_counter()
                run(variant)
                seconds[variant].append(time.perf_counter() - start)

    def speedup(variant: str) -> float:
        return statistics.median(a / b for a, b in zip(seconds["one_option_per_forward"], seconds[variant]))

    reference = scores["one_option_per_forward"]
    report = {
        "items": num_items, "options": sum(len(s) for s in reference), "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "items_per_second": {v: num_items / statistics.median(seconds[v]) for v in VARIANTS},
        "speedup_vs_one_option": {v: speedup(v) for v in VARIANTS[1:]},
        "max_abs_score_difference": max(abs(a - b) for v in VARIANTS[1:] for x, y in zip(reference, scores[v])
                                        for a, b in zip(x, y)),
    }
    print(json.dumps(report, indent=2))
    print("\n| variant | items/s | speedup vs one option per forward |\n|---|---|---|")
    for variant in VARIANTS:
        ratio = f"{report['speedup_vs_one_option'][variant]:.2f}×" if variant in report["speedup_vs_one_option"] else "1.00×"
        print(f"| {variant} | {report['items_per_second'][variant]:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
