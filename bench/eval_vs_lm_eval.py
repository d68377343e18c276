"""Log-likelihood evaluation, ours vs lm-evaluation-harness: the same items, prompts, option continuations
and tiny model through both, side by side.

    ours         post_processors.multiple_choice.MultipleChoiceEvaluator, lm-eval's truncation (truncation=lm_eval)
    ours_shared  the same with truncation=shared: a long context cut once, all options in one row
    lm_eval      lm-eval's HFLM on the model folder, running a local multiple_choice task per evaluator built from
                 the same rendered prompts (doc_to_text) and option texts (doc_to_choice, target_delimiter " ")
    ours_lm_eval our lm-eval wrapper (post_processors/lm_eval_model.py LiveLM, what the lm_eval evaluator runs) on
                 the loaded model, through lm-eval's `evaluate` on the same tasks as lm_eval

Suites:
    logiqa   the bundled LogiQA 2.0 dev samples (zh + en, 30 items, 0-shot): short prompts, nothing truncated
    c3_long  C3 in its release layout with long passages (the bundled C3 dialogues, each document's lines
             repeated until its prompt far exceeds max_length=1024 tokens, as most C3-m prompts do): C3-d
             0-shot and C3-m 3-shot; every item is truncated
Both sides are timed from the read items to the metrics (tokenization, forward calls, choice, metrics; ours
also writes its prediction files, lm-eval logs no samples), with the model loaded and the task documents
built beforehand. Both take the same items per forward call: `--batch-size` items for ours (an item's options
share one row, see modules/scoring.py) and 4 × batch-size requests for lm-eval and the wrapper. The sides alternate within
each repetition; a speedup is the median of the per-repetition ratios (shared CPUs are noisy).

Agreement: for `ours` and `ours_lm_eval`, every option's summed log-likelihood (max |ours − lm-eval| ≤ 1e-4) and
every item's acc and acc_norm choice, hence the metrics; for `ours_shared` (which gives short options less context on
truncated items) the largest score difference and the share of identical choices are reported.

Needs `pip install -r requirements-bench.txt` (lm-eval); installs nothing by itself. Offline: nothing is
read from the hub (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1; the task's documents are passed in memory).

    python -m bench.eval_vs_lm_eval            # both suites, 5 repetitions, 1 torch thread
    python -m bench.eval_vs_lm_eval --quick    # 2 items per evaluator, 1 repetition: checks the comparison (CI)
"""
import argparse
import contextlib
import functools
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


import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.harness import REPO
from bench.eval_speed import LOSS, MAX_SEQ_LENGTH, logiqa_evaluators
from bench.tokenize_cache import machine
from data.benchmarks import C3Reader, MultipleChoicePrompt
from post_processors.multiple_choice import MultipleChoiceEvaluator

MODEL = REPO / "models" / "tiny_llama"
TOLERANCE = 1e-4  # on a summed log-likelihood
GOAL = 3.0        # ours ≥ 3× lm-eval's items/s, on every suite (the faster truncation where prompts are cut)
LONG_PASSAGE_CHARACTERS = 3000  # C3-m prompts run to a median of 2820 tokens
WRAPPED = "ours_lm_eval"  # our lm-eval model wrapper, the path of the lm_eval evaluator


def long_c3_folder(folder: Path) -> Path:
    """The bundled C3 documents with each document's lines repeated to ≥ LONG_PASSAGE_CHARACTERS, written in the
    release layout (c3-{d,m}-dev.json) into `folder`."""
    for subset in ("d", "m"):
        documents = json.loads((REPO / "data" / "samples" / "c3" / f"c3-{subset}-dev.json").read_text(encoding="utf-8"))
        for document in documents:
            lines = list(document[0])
            while sum(map(len, document[0])) < LONG_PASSAGE_CHARACTERS:
                document[0] += lines
        (folder / f"c3-{subset}-dev.json").write_text(json.dumps(documents, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder


def c3_long_evaluators(folder: Path, limit: int | None, batch_size: int, truncation: str) -> list[MultipleChoiceEvaluator]:
    return [MultipleChoiceEvaluator(f"c3_{subset}_long", functools.partial(C3Reader, subset=subset),
                                    MultipleChoicePrompt("zh", num_shots=shots), batch_size=batch_size,
                                    max_seq_length=MAX_SEQ_LENGTH, truncation=truncation, data_dir=folder, limit=limit)
            for subset, shots in (("d", 0), ("m", 3))]


def suites(limit: int | None, batch_size: int, workdir: Path) -> dict[str, dict[str, list[MultipleChoiceEvaluator]]]:
    """suite → side (ours, ours_shared) → evaluators (the same items and prompts on both sides)."""
    folder = long_c3_folder(workdir)
    return {"logiqa": {"ours": logiqa_evaluators(limit, batch_size),
                       "ours_shared": logiqa_evaluators(limit, batch_size)},
            "c3_long": {side: c3_long_evaluators(folder, limit, batch_size, truncation)
                        for side, truncation in (("ours", "lm_eval"), ("ours_shared", "shared"))}}


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
        metrics = evaluator(model, tokenizer, workdir / evaluator.name, LOSS)
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
        "identical_choices": sum(a[1] == b[1] and a[2] == b[2] for a, b in pairs) / len(pairs),
        "metrics_identical": all(ours[n][m] == theirs[n][m] for n in ours for m in ("acc", "acc_norm")),
    }


def measure(evaluators: dict[str, list[MultipleChoiceEvaluator]], lm, wrapped, model, tokenizer, workdir: Path,
            repeats: int) -> dict:
    """One suite: every side's results, timings and agreement with lm-eval (`lm`: its HFLM; `wrapped`: our
    LiveLM on the same tasks)."""
    tasks = lm_eval_tasks(evaluators["ours"])
    results = {side: run_ours(runs, model, tokenizer, workdir / side) for side, runs in evaluators.items()}  # warm-up
    results["lm_eval"] = run_lm_eval(lm, tasks, log_samples=True)
    results[WRAPPED] = run_lm_eval(wrapped, tasks, log_samples=True)
    runs = {side: (lambda runs=runs, side=side: run_ours(runs, model, tokenizer, workdir / side))
            for side, runs in evaluators.items()}
    runs["lm_eval"] = lambda: run_lm_eval(lm, tasks, log_samples=False)
    runs[WRAPPED] = lambda: run_lm_eval(wrapped, tasks, log_samples=False)
    compared = [*evaluators, WRAPPED]
    seconds = {side: [] for side in runs}
    for repeat in range(repeats):
        for side in sorted(runs, reverse=repeat % 2 == 1):  # alternate which goes first
            start = time.perf_counter()
            runs[side]()
            seconds[side].append(time.perf_counter() - start)
    num_items = sum(len(e.items) for e in evaluators["ours"])
    report = {"items": num_items,
              "options": sum(len(scores) for task in results["ours"].values() for scores, _, _ in task["items"]),
              "truncated_items": sum(sum(r["truncated"] for r in read_predictions(workdir / "ours" / e.name))
                                     for e in evaluators["ours"]),
              "items_per_second": {side: num_items / statistics.median(s) for side, s in seconds.items()},
              "speedup": {side: statistics.median(t / o for o, t in zip(seconds[side], seconds["lm_eval"]))
                          for side in compared},
              "agreement": {side: agreement(results[side], results["lm_eval"]) for side in compared},
              "metrics": {name: {side: {m: results[side][name][m] for m in ("acc", "acc_norm")} for side in results}
                          for name in results["ours"]}}
    report["scores_agree"] = exact_agreement(report["agreement"]["ours"])
    report["wrapped_agrees"] = exact_agreement(report["agreement"][WRAPPED])
    return report


def exact_agreement(same: dict) -> bool:
    return same["max_abs_loglikelihood_difference"] <= TOLERANCE and same["item_acc_identical"] \
        and same["item_acc_norm_identical"] and same["metrics_identical"]


def read_predictions(folder: Path) -> list[dict]:
    with open(folder / "predictions.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 items per evaluator, one repetition")
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

    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as workdir:
        import lm_eval  # library chatter to stderr: stdout is the JSON and the table
        from lm_eval.models.huggingface import HFLM

        tokenizer = AutoTokenizer.from_pretrained(MODEL)
        model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
        from post_processors.lm_eval_model import LiveLM

        lm = HFLM(pretrained=str(MODEL), device="cpu", dtype="float32", batch_size=4 * args.batch_size,
                  max_length=MAX_SEQ_LENGTH, add_bos_token=True)  # ours puts BOS before the prompt too
        wrapped = LiveLM(model, tokenizer, batch_size=4 * args.batch_size, max_length=MAX_SEQ_LENGTH, add_bos_token=True,
                         loss=LOSS)
        measured = {}
        for name, evaluators in suites(limit, args.batch_size, Path(workdir)).items():
            measured[name] = measure(evaluators, lm, wrapped, model, tokenizer, Path(workdir) / name, repeats)

    report = {
        "mode": "quick" if args.quick else "full", "machine": machine(), "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": sys.modules["transformers"].__version__,
                     "lm_eval": lm_eval.__version__},
        "model": "tiny_llama: LLaMA 2 layers, hidden 64, vocab 1024, fp32", "max_length": MAX_SEQ_LENGTH,
        "per_forward": {"ours": f"{args.batch_size} items", "lm_eval": f"{4 * args.batch_size} requests",
                        WRAPPED: f"{4 * args.batch_size} requests"},
        "repeats": repeats, "goal": f"≥ {GOAL}× lm-eval's items/s on every suite, identical scores with truncation=lm_eval",
        "suites": measured,
    }
    report["goal_met"] = all(s["scores_agree"] and max(s["speedup"]["ours"], s["speedup"]["ours_shared"]) >= GOAL
                             for s in measured.values())
    print(json.dumps(report, indent=2))
    print("\n| suite | side | items/s | speedup vs lm-eval | identical choices | acc |\n|---|---|---|---|---|---|")
    for name, suite in measured.items():
        for side in ("ours", "ours_shared", WRAPPED, "lm_eval"):
            speedup = suite["speedup"].get(side, 1.0)
            same = suite["agreement"][side]["identical_choices"] if side in suite["agreement"] else 1.0
            acc = ", ".join(f"{suite['metrics'][n][side]['acc']:.3f}" for n in suite["metrics"])
            print(f"| {name} | {side} | {suite['items_per_second'][side]:.1f} | {speedup:.2f}× | {same:.0%} | {acc} |")


if __name__ == "__main__":
    main()
