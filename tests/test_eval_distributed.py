"""Evaluation end to end: two ranks (gloo, a ZeRO-3 engine, odd item counts, scoring by loss_impl=chunked)
write exactly the predictions of one rank (full logits); the output files; the shipped conf/eval nodes compose
and run."""
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.benchmarks import C3Reader, LogiQAReader, MultipleChoicePrompt, ReClorReader
from general_util.dist import free_port
from modules.loss_impl import LossSettings, resolve
from post_processors.multiple_choice import MultipleChoiceEvaluator

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "models" / "tiny_llama")
# Odd item counts, and batch sizes that give the two ranks different numbers of batches, so the rank with
# fewer must run stand-in batches (ZeRO-3 hangs otherwise); "one_item" leaves rank 1 without items.
CASES = {
    "logiqa": dict(reader=functools.partial(LogiQAReader, language="zh"), prompt=MultipleChoicePrompt("zh", num_shots=1),
                   data_dir="data/samples/logiqa_v2", batch_size=7),                      # 15 items: 8 + 7 → 2 and 1 batches
    "c3_generate": dict(reader=C3Reader, prompt=MultipleChoicePrompt("zh", answer_format="letter"), scoring="generate",
                        generation={"max_new_tokens": 4}, data_dir="data/samples/c3", batch_size=3, limit=7),  # 4 + 3
    "one_item": dict(reader=functools.partial(ReClorReader, split="test"), prompt=MultipleChoicePrompt("en"),
                     data_dir="data/samples/reclor", limit=1),
}
NUM_ITEMS = {"logiqa": 15, "c3_generate": 7, "one_item": 1}
CHUNKED = LossSettings("chunked", 5)  # the two ranks: log-probs from hidden states in slices, the head ZeRO-3-gathered


def evaluate_on_rank(rank: int, world_size: int, port: int, out: str) -> None:
    """One rank of the two-rank run (started by torch.multiprocessing)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import deepspeed

    from general_util.dist import exit_process, init_distributed, teardown
    init_distributed()
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    engine, *_ = deepspeed.initialize(model=model, config={"train_micro_batch_size_per_gpu": 1,
                                                           "zero_optimization": {"stage": 3}})
    engine.eval()
    assert engine.zero_optimization_partition_weights() and resolve(engine, CHUNKED, torch.device("cpu")) == "chunked"
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, kwargs in CASES.items():
        metrics = MultipleChoiceEvaluator(name, **kwargs)(engine, tokenizer, Path(out) / name, CHUNKED)
        (Path(out) / f"{name}.rank{rank}.json").write_text(json.dumps(metrics))
    teardown(engine)  # and leave as the trainer does: no gloo thread destroyed at interpreter exit (SIGABRT)
    exit_process(0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    for name, kwargs in CASES.items():
        metrics = MultipleChoiceEvaluator(name, **kwargs)(model, tokenizer, root / "1" / name, LossSettings())
        (root / "1" / f"{name}.rank0.json").write_text(json.dumps(metrics))
    # forkserver: the ranks start from the warm fork server (tests/forked_ranks.py), not a fresh interpreter
    processes = mp.start_processes(evaluate_on_rank, args=(2, free_port(), str(root / "2")), nprocs=2, join=False,
                                   start_method="forkserver")
    deadline = time.monotonic() + 1200  # only a hang (ranks making different numbers of calls) gets near it
    while not processes.join(timeout=5):
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.terminate()
            pytest.fail("the two-rank evaluation hung (ranks made different numbers of forward calls?)")
    return {"1": root / "1", "2": root / "2"}


def read_predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_two_ranks_write_each_prediction_once_as_one_rank_does(runs, name):
    single, double = read_predictions(runs["1"] / name), read_predictions(runs["2"] / name)
    assert [p["index"] for p in double] == list(range(NUM_ITEMS[name])) == [p["index"] for p in single]
    for one, two in zip(single, double):
        assert (two["id"], two["prompt"], two["prediction"], two["gold"]) == (one["id"], one["prompt"], one["prediction"], one["gold"])
        if "scores" in one:
            assert two["scores"]["loglikelihood"] == pytest.approx(one["scores"]["loglikelihood"], abs=1e-5)
        else:
            assert two["generation"] == one["generation"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_every_rank_returns_the_same_metrics(runs, name):
    single = json.loads((runs["1"] / f"{name}.rank0.json").read_text())
    rank0, rank1 = (json.loads((runs["2"] / f"{name}.rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert rank0 == pytest.approx(single)
    assert json.loads((runs["2"] / name / "metrics.json").read_text()) == rank0


@pytest.mark.slow
def test_unlabelled_split_writes_the_leaderboard_file(runs):
    for run in runs.values():
        submission = np.load(run / "one_item" / "predictions.npy")
        assert submission.tolist() == [read_predictions(run / "one_item")[0]["prediction"]]
    assert json.loads((runs["1"] / "one_item" / "metrics.json").read_text()) == {"n": 1, "labelled": 0, "truncated": 0}


def test_prediction_records_hold_prompt_scores_and_provenance(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    MultipleChoiceEvaluator("c3", C3Reader, MultipleChoicePrompt("zh"), data_dir="data/samples/c3", limit=3)(
        model, tokenizer, tmp_path, LossSettings())
    first = read_predictions(tmp_path)[0]
    assert first["source"].endswith("c3-d-dev.json (record 0, question 0)") and first["id"] == "d1-1-0"
    assert first["prompt"].endswith("答案：") and first["continuations"] == [" " + o for o in first["options"]]
    assert len(first["scores"]["loglikelihood"]) == len(first["scores"]["per_char"]) == len(first["options"])
    assert first["correct"] == (first["prediction"] == first["gold"])
    assert not (tmp_path / "predictions.npy").exists()


def test_shipped_eval_nodes_compose_and_run(tmp_path):
    names = {"logiqa_zh": "logiqa_v2_zh", "logiqa_en": "logiqa_v2_en", "c3_d": "c3_d", "c3_m": "c3_m",
             "reclor": "reclor", "mmlu": "mmlu"}
    defaults = "".join(f"  - eval@evaluators.{key}: {node}\n" for key, node in names.items())
    (tmp_path / "task.yaml").write_text(f"defaults:\n{defaults}  - _self_\nseed: 42\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose("task", overrides=[f"evaluators.{key}.limit=3" for key in names] + ["evaluators.mmlu.limit=6"])
    assert cfg.evaluators.logiqa_zh.data_dir == "data/samples/logiqa_v2" and cfg.evaluators.mmlu.prompt.seed == 42
    evaluators = instantiate(cfg.evaluators)
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    for key, evaluator in evaluators.items():
        assert evaluator.name == names[key]
        metrics = evaluator(model, tokenizer, tmp_path / key, LossSettings())
        assert metrics["n"] == (6 if key == "mmlu" else 3) and 0.0 <= metrics["acc"] <= 1.0
    mmlu = read_predictions(tmp_path / "mmlu")
    assert mmlu[0]["prompt"].startswith("The following are multiple choice questions (with answers) about abstract algebra.")
    assert mmlu[0]["prompt"].count("\nAnswer:") == 6 and mmlu[0]["continuations"] == [" A", " B", " C", " D"]
    assert "subject/abstract_algebra/acc" in metrics and "category/STEM/acc" in metrics
