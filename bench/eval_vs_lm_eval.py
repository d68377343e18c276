"""Log-likelihood evaluation, ours vs lm-evaluation-harness: the same items, prompts, option continuations
and tiny model through both, side by side.

    ours     post_processors.multiple_choice.MultipleChoiceEvaluator (batch_size items per forward call)
    lm_eval  lm-eval's HFLM on the model folder, running a local multiple_choice task per language built from
             the same rendered prompts (doc_to_text) and option texts (doc_to_choice, target_delimiter " ")

Items: the bundled LogiQA 2.0 dev samples (zh + en, 30 items, 0-shot, option texts scored). Both sides are
timed from the read items to the metrics (tokenization, forward calls, choice, metrics; ours also writes its
prediction files, lm-eval logs no samples), with the model loaded and the task documents built beforehand.
Both sides take the same items per forward call: `--batch-size` items for ours (an item's options share one
row, see modules/scoring.py) and 4 × batch-size requests for lm-eval (LogiQA items have 4 options, one row
each). The two alternate within each repetition; the speedup is the median of the per-repetition
ratios (shared CPUs are noisy).

Agreement: every option's summed log-likelihood (max |ours − lm-eval| ≤ 1e-4) and every item's acc and
acc_norm choice, hence the metrics.

Needs `pip install -r requirements-bench.txt` (lm-eval); installs nothing by itself. Offline: nothing is
read from the hub (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1; the task's documents are passed in memory).

    python bench/eval_vs_lm_eval.py            # 30 items, 5 repetitions, 1 torch thread
    python bench/eval_vs_lm_eval.py --quick    # 2 items per language, 1 repetition: checks the comparison (CI)
"""
import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from bench.eval_speed import MAX_SEQ_LENGTH, logiqa_evaluators  # noqa: E402
from bench.tokenize_cache import machine  # noqa: E402
from post_processors.multiple_choice import MultipleChoiceEvaluator  # noqa: E402

MODEL = REPO / "models" / "tiny_llama"
TOLERANCE = 1e-4  # on a summed log-likelihood
GOAL = 2.0        # ours ≥ 2× lm-eval's items/s


def lm_eval_tasks(evaluators: list[MultipleChoiceEvaluator]) -> dict:
    """One lm-eval multiple_choice task per evaluator, its documents our rendered prompts and answers: lm-eval
    scores context = doc_to_text, continuation = target_delimiter + choice — the strings ours scores."""
    from datasets import Dataset, DatasetDict
    from lm_eval.api.task import ConfigurableTask

    tasks = {}
    for evaluator in evaluators:
        docs = [{"prompt": prompt, "choices": evaluator.prompt.answers(item), "gold": item.gold}
                for item, prompt in zip(evaluator.items, evaluator.prompts)]
        assert all(" " + a == c for d, item in zip(docs, evaluator.items)
                   for a, c in zip(d["choices"], evaluator.prompt.continuations(item)))
        tasks[evaluator.name] = ConfigurableTask(config={
            "task": evaluator.name, "output_type": "multiple_choice", "num_fewshot": 0,
            "custom_dataset": lambda docs=docs, **_: DatasetDict({"validation": Dataset.from_list(docs)}),
            "validation_split": "validation", "target_delimiter": " ",
            "doc_to_text": lambda doc: doc["prompt"], "doc_to_choice": lambda doc: doc["choices"],
            "doc_to_target": lambda doc: doc["gold"],
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]})
    return tasks


def run_ours(evaluators: list[MultipleChoiceEvaluator], model, tokenizer, workdir: Path) -> dict:
    """Per task: metrics and per-item records (option log-likelihoods, acc and acc_norm correctness)."""
    out = {}
    for evaluator in evaluators:
        metrics = evaluator(model, tokenizer, workdir / evaluator.name)
        with open(workdir / evaluator.name / "predictions.jsonl", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        out[evaluator.name] = {"acc": metrics["acc"], "acc_norm": metrics["acc_norm"],
                               "items": [(r["scores"]["loglikelihood"], float(r["correct"]), float(r["correct_norm"]))
                                         for r in records]}
    return out


def run_lm_eval(lm, tasks: dict, log_samples: bool) -> dict:
    from lm_eval.evaluator import evaluate

    results = evaluate(lm, tasks, log_samples=log_samples, verbosity="ERROR")
    out = {}
    for name in tasks:
        metrics = results["results"][name]
        out[name] = {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"]}
        if log_samples:
            samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
            out[name]["items"] = [([ll for ll, _ in s["filtered_resps"]], s["acc"], s["acc_norm"]) for s in samples]
    return out


def agreement(ours: dict, theirs: dict) -> dict:
    pairs = [(a, b) for name in ours for a, b in zip(ours[name]["items"], theirs[name]["items"], strict=True)]
    return {
        "max_abs_loglikelihood_difference": max(abs(x - y) for a, b in pairs for x, y in zip(a[0], b[0], strict=True)),
        "item_acc_identical": all(a[1] == b[1] for a, b in pairs),
        "item_acc_norm_identical": all(a[2] == b[2] for a, b in pairs),
        "metrics_identical": all(ours[n][m] == theirs[n][m] for n in ours for m in ("acc", "acc_norm")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 items per language, one repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="items per forward call for ours; lm-eval gets 4× as many requests (same items)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, both sides (1: steady timings on a shared machine; the ratio is what counts)")
    args = parser.parse_args()
    if importlib.util.find_spec("lm_eval") is None:
        sys.exit("lm-eval is not installed: pip install -r requirements-bench.txt (this script installs nothing)")
    limit, repeats = (2, 1) if args.quick else (None, args.repeats)
    torch.set_num_threads(args.threads)

    with contextlib.redirect_stdout(sys.stderr):  # library chatter to stderr: stdout is the JSON and the table
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        tokenizer = AutoTokenizer.from_pretrained(MODEL)
        model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
        lm = HFLM(pretrained=str(MODEL), device="cpu", dtype="float32", batch_size=4 * args.batch_size,
                  max_length=MAX_SEQ_LENGTH, add_bos_token=True)  # ours puts BOS before the prompt too
        evaluators = logiqa_evaluators(limit, args.batch_size)
        tasks = lm_eval_tasks(evaluators)
        num_items = sum(len(e.items) for e in evaluators)
        seconds = {"ours": [], "lm_eval": []}
        with tempfile.TemporaryDirectory() as workdir:
            ours = run_ours(evaluators, model, tokenizer, Path(workdir))  # warm-up, and the results to compare
            theirs = run_lm_eval(lm, tasks, log_samples=True)
            runs = {"ours": lambda: run_ours(evaluators, model, tokenizer, Path(workdir)),
                    "lm_eval": lambda: run_lm_eval(lm, tasks, log_samples=False)}
            for repeat in range(repeats):
                for side in sorted(runs, reverse=repeat % 2 == 1):  # alternate which goes first
                    start = time.perf_counter()
                    runs[side]()
                    seconds[side].append(time.perf_counter() - start)

    agreed = agreement(ours, theirs)
    report = {
        "mode": "quick" if args.quick else "full", "machine": machine(), "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": sys.modules["transformers"].__version__,
                     "lm_eval": lm_eval.__version__},
        "model": "tiny_llama: LLaMA 2 layers, hidden 64, vocab 1024, fp32", "items": num_items,
        "options": sum(len(scores) for task in ours.values() for scores, _, _ in task["items"]),
        "per_forward": {"ours": f"{args.batch_size} items", "lm_eval": f"{4 * args.batch_size} requests"},
        "repeats": repeats,
        "items_per_second": {side: num_items / statistics.median(s) for side, s in seconds.items()},
        "speedup": statistics.median(t / o for o, t in zip(seconds["ours"], seconds["lm_eval"])),
        **agreed,
        "scores_agree": agreed["max_abs_loglikelihood_difference"] <= TOLERANCE and agreed["item_acc_identical"]
        and agreed["item_acc_norm_identical"] and agreed["metrics_identical"],
        "metrics": {name: {side: {m: results[name][m] for m in ("acc", "acc_norm")}
                           for side, results in (("ours", ours), ("lm_eval", theirs))} for name in ours},
    }
    report["goal_met"] = report["scores_agree"] and report["speedup"] >= GOAL
    print(json.dumps(report, indent=2))
    print("\n| evaluator | items/s | speedup | acc (zh, en) | acc_norm (zh, en) |\n|---|---|---|---|---|")
    for side, speedup in (("ours", report["speedup"]), ("lm_eval", 1.0)):
        acc, acc_norm = (", ".join(f"{report['metrics'][n][side][m]:.3f}" for n in report["metrics"])
                         for m in ("acc", "acc_norm"))
        print(f"| {side} | {report['items_per_second'][side]:.1f} | {speedup:.2f}× | {acc} | {acc_norm} |")


if __name__ == "__main__":
    main()
