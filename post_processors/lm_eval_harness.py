"""Any lm-evaluation-harness task (its official prompts, filters and metrics) as an evaluator, on the live
model during training and on every checkpoint of the sweep.

The tasks are loaded once, when the evaluator is built (before training starts: a task whose dataset cannot
be read stops the run with one line naming it), with lm-eval's own `TaskManager`; each call runs lm-eval's
`evaluate` on them through `post_processors.lm_eval_model.LiveLM`, with what `simple_evaluate` sets up
around it (its num_fewshot and gen_kwargs overrides, its seeds; the training's random state is restored
afterwards). Every rank returns the same metrics, `{"<task>/<metric>": value}` (lm-eval's `acc,none`;
another filter than `none` adds its name: `exact_match,strict-match` → `<task>/exact_match/strict-match`),
groups included; global rank 0 writes `metrics.json`, lm-eval's `results.json` and the per-sample records
`samples_<task>.jsonl` (prompt arguments, responses, filtered responses, target, metrics).

lm-eval is optional (requirements-lm-eval.txt): it is imported only when this evaluator is configured.
"""
import contextlib
import functools
import json
import random
from pathlib import Path

import numpy as np
import torch

from general_util.paths import resolve_path
from general_util.dist import current
from general_util.errors import ConfigError, UserError
from modules.loss_impl import LossSettings

REQUIREMENTS = "requirements-lm-eval.txt"


class DatasetUnavailable(UserError):
    """A task's dataset could not be read (no network, not cached, a missing local file)."""


class LMEvalHarnessEvaluator:
    """`tasks`: lm-eval task or group names (`gsm8k`, `cmmlu`), paths to task YAML files, or folders of them (a
    folder adds its task YAMLs; the folders of both make their tasks and groups nameable). `num_fewshot`: None keeps each
    task's own (a task that fixes 0 keeps 0, as in lm-eval). `limit`: documents per task (a fraction < 1:
    that share). `batch_size`: requests per model call. `max_length`: context length (None: the model's);
    `max_gen_toks`: tokens a generation task may add when it does not say; `gen_kwargs`: overrides of every
    generation task's `generation_kwargs` (`until`, `max_gen_toks`, `do_sample`, `temperature`, ...).
    `apply_chat_template`, `fewshot_as_multiturn`, `system_instruction`: as lm-eval's options of those names.
    `add_bos_token`: None leaves it to the tokenizer (lm-eval's default). `bootstrap_iters`: lm-eval's stderr
    iterations (0: no stderr metrics)."""

    def __init__(self, name: str, tasks: list[str], num_fewshot: int | None = None, limit: float | None = None,
                 batch_size: int = 8, max_length: int | None = None, max_gen_toks: int = 256,
                 gen_kwargs: dict | None = None, apply_chat_template: bool | str = False,
                 fewshot_as_multiturn: bool = False, system_instruction: str | None = None,
                 add_bos_token: bool | None = None, bootstrap_iters: int = 0, confirm_run_unsafe_code: bool = False):
        try:
            import lm_eval.tasks  # noqa: F401
        except ImportError as error:
            raise ConfigError(f"evaluator {name}: lm-evaluation-harness is not installed ({error}); "
                              f"pip install -r {REQUIREMENTS}") from error
        if not tasks:
            raise ConfigError(f"evaluator {name}: tasks is empty; name lm-eval tasks or task YAML files")
        if batch_size < 1:
            raise ConfigError(f"evaluator {name}: batch_size={batch_size}; must be ≥ 1")
        self.name, self.limit, self.batch_size = name, limit, batch_size
        self.max_length, self.max_gen_toks, self.add_bos_token = max_length, max_gen_toks, add_bos_token
        self.options = {"bootstrap_iters": bootstrap_iters, "system_instruction": system_instruction,
                        "apply_chat_template": apply_chat_template, "fewshot_as_multiturn": fewshot_as_multiturn,
                        "confirm_run_unsafe_code": confirm_run_unsafe_code}
        specs, folders = task_specs(list(tasks))
        names = [spec for spec in specs if not Path(spec).is_file()]
        manager = task_manager(tuple(folders), include_defaults=False)
        if any(spec not in manager.all_tasks for spec in names):  # lm-eval's own tasks: index them too (slower)
            manager = task_manager(tuple(folders), include_defaults=True)
        self.task_dict = load_tasks(manager, specs, name)
        configure_tasks(self.task_dict["tasks"].values(), num_fewshot, dict(gen_kwargs or {}))

    def metric_names(self) -> list[str]:
        """What each call reports, as `flat_metrics` names them, from the loaded tasks (before any model is
        loaded): each task's metrics under each of its filters, each group's aggregated metrics (under the filters
        its members have, where the group names none), and their `_stderr` when bootstrap_iters > 0."""
        tasks = self.task_dict["tasks"].values()
        metrics = {}
        for task in tasks:
            filters = [f.name for f in task._filters] or ["none"]
            metrics[task.config.task] = [(m, f) for m in task._metric_fn_list for f in filters]
        for group_name, group in self.task_dict.get("groups", {}).items():
            members = [getattr(t, "task_name", None) or t.config.task for t in group.get_all_tasks()]
            for aggregate in group.aggregate_metric_list or []:
                filters = aggregate.filter_list or sorted({f for member in members for m, f in metrics.get(member, [])
                                                           if m == aggregate.metric})
                metrics[getattr(group, "name", group_name)] = [(aggregate.metric, f) for f in filters or ["none"]]
        stderr = self.options["bootstrap_iters"] > 0
        return [name for task, pairs in metrics.items() for metric, filter_name in pairs
                for name in flat_metrics({task: {f"{metric},{filter_name}": 0.0,
                                                 **({f"{metric}_stderr,{filter_name}": 0.0} if stderr else {})}})]

    def __call__(self, model, tokenizer, output_dir: str | Path, loss: LossSettings) -> dict[str, float]:
        from lm_eval.defaults import DEFAULT_OTHER_SEED
        from lm_eval.evaluator import evaluate

        from post_processors.lm_eval_model import LiveLM

        lm = LiveLM(model, tokenizer, self.batch_size, self.max_length, self.max_gen_toks, self.add_bos_token, loss=loss)
        for task in self.task_dict["tasks"].values():
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)  # the same few-shot examples at every evaluation
        with lm_eval_seeds():
            results = evaluate(lm, self.task_dict, limit=self.limit, log_samples=True, **self.options)
        metrics = flat_metrics(results["results"])
        if current().is_main:
            write_results(Path(output_dir), results, metrics)
        return metrics


@functools.cache
def task_manager(folders: tuple[str, ...], include_defaults: bool):
    """lm-eval's TaskManager over `folders` (and lm-eval's own tasks when `include_defaults`), built once per
    process: indexing lm-eval's ~14,700 task YAMLs takes ~10 s, which each evaluator naming one of them would
    otherwise pay again. A folder is read when it is first indexed."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=list(folders) or None, include_defaults=include_defaults)


def task_specs(tasks: list[str]) -> tuple[list[str], list[str]]:
    """(what TaskManager.load takes: names and YAML paths, the folders to index: those named and those of the YAML
    files). A folder stands for its task YAMLs (files with a `task:` key), in name order."""
    specs, folders = [], []
    for task in tasks:
        path = resolve_path(task)
        if path.is_dir():
            folders.append(str(path))
            specs += [str(p) for p in sorted(path.glob("*.y*ml")) if is_task_yaml(p)]
        elif path.suffix in (".yaml", ".yml") or path.is_file():
            specs.append(str(path))
            folders.append(str(path.parent))  # its includes and sibling tasks (a group's members) by name
        else:
            specs.append(task)
    return specs, folders


def is_task_yaml(path: Path) -> bool:
    from lm_eval.tasks._index import Kind, TaskIndex
    entry = TaskIndex.entry_from_path(path)
    return entry is not None and entry.kind in (Kind.TASK, Kind.PY_TASK)


def load_tasks(manager, specs: list[str], name: str) -> dict:
    try:
        return manager.load(specs)
    except KeyError as error:
        raise ConfigError(f"evaluator {name}: {error.args[0]}; check its tasks") from error
    except OSError as error:  # ConnectionError (hub unreachable or offline), FileNotFoundError (not cached, no file)
        raise DatasetUnavailable(f"evaluator {name}: {dataset_of(error)} could not be loaded: {first_line(error)}; "
                                 f"run where the hub is reachable (without HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), or point "
                                 f"a task YAML at local files (dataset_path: json, dataset_kwargs.data_files)") from error


def dataset_of(error: BaseException) -> str:
    """'task T: dataset P (name N, files F)' of the lm-eval task whose download raised `error`."""
    task, tb = None, error.__traceback__
    while tb is not None:  # the innermost frame of a task's own method (ConfigurableTask.download)
        candidate = tb.tb_frame.f_locals.get("self")
        if hasattr(candidate, "DATASET_PATH") and hasattr(candidate, "config"):
            task = candidate
        tb = tb.tb_next
    if task is None:
        return "a task's dataset"
    config = task.config
    details = [f"name {config.dataset_name}"] if config.dataset_name else []
    if (config.dataset_kwargs or {}).get("data_files"):
        details.append(f"files {config.dataset_kwargs['data_files']}")
    return f"task {config.task}: dataset {config.dataset_path}" + (f" ({', '.join(details)})" if details else "")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def configure_tasks(tasks, num_fewshot: int | None, gen_kwargs: dict) -> None:
    """What `lm_eval.simple_evaluate` does to the loaded tasks (0.4.13): generation overrides, and num_fewshot
    (a task that fixes 0 keeps it; none set: 0)."""
    for task in tasks:
        if task.get_config("output_type") == "generate_until" and gen_kwargs:
            task.set_config(key="generation_kwargs", value=gen_kwargs, update=True)
        if num_fewshot is not None:
            if task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)


@contextlib.contextmanager
def lm_eval_seeds():
    """`simple_evaluate`'s seeds (Python 0, NumPy and torch 1234) inside; the caller's random state after."""
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(DEFAULT_RANDOM_SEED)
        np.random.seed(DEFAULT_OTHER_SEED)
        torch.manual_seed(DEFAULT_OTHER_SEED)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def flat_metrics(results: dict[str, dict]) -> dict[str, float]:
    """lm-eval's `{task: {"acc,none": v, "acc_stderr,none": "N/A", "alias": ...}}` → `{"task/acc": v}`: the
    numeric values only; a filter other than `none` is kept as `task/metric/filter`."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            flat[f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric}/{filter_name}"] = float(value)
    return flat


def write_results(output_dir: Path, results: dict, metrics: dict[str, float]) -> None:
    from lm_eval.utils import handle_non_serializable

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    summary = {k: v for k, v in results.items() if k != "samples"}
    (output_dir / "results.json").write_text(
        json.dumps(summary, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    for task, samples in results.get("samples", {}).items():
        with open(output_dir / f"samples_{task}.jsonl", "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
