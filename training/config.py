"""Start-up validation and the derived numbers of a run (optimizer steps, warmup, DeepSpeed config).

Everything that can be checked before a model is loaded is checked here, and every problem is
reported at once in a single line naming the key, its value and the fix.
"""
import difflib
import importlib.util
import inspect
import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from general_util.paths import resolve_path
from data.readers import expand_files
from data.records import DataError
from general_util.cli import MOVED_KEYS, MOVED_PREFIXES
from general_util.errors import ConfigError
from general_util.trackers import check_report_to
from models.vocab import FREEZE_STRATEGIES
from modules.loss_impl import settings_problems
from modules.sequence_parallel import SHARDED_ATTENTION, head_problem
from training.vllm_generation import generation_backend_problems

BASE_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "base.yaml"
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("WarmupDecayLR", "WarmupLR")


def known_top_level_keys() -> set[str]:
    base = OmegaConf.load(BASE_CONFIG)
    # `- group@package: option` entries of the defaults list add a top-level key named after the package.
    groups = {key.split("@")[-1] for entry in base.get("defaults", []) if not isinstance(entry, str) for key in entry}
    return (set(base.keys()) | groups) - {"defaults", "hydra"}


def validate(cfg: DictConfig, world_size: int) -> None:
    problems = []
    known = known_top_level_keys()
    for key in sorted(set(cfg.keys()) - known):
        close = difflib.get_close_matches(key, known, n=1)
        moved = MOVED_PREFIXES.get(f"{key}.")
        hint = (f"; its keys are {moved}<key> now" if moved else f"; did you mean '{close[0]}'?" if close
                else f" (every key must be declared in {BASE_CONFIG.name})")
        problems.append(f"unknown top-level key '{key}'{hint}")

    def check(condition: bool, key: str, fix: str) -> None:
        if not condition:
            problems.append(f"{key}={OmegaConf.select(cfg, key)!r}: {fix}")

    check(cfg.precision in PRECISIONS, "precision", f"use one of {', '.join(PRECISIONS)}")
    check(cfg.lr_scheduler in SCHEDULERS, "lr_scheduler", f"use one of {', '.join(SCHEDULERS)}")
    check(cfg.per_gpu_train_batch_size >= 1, "per_gpu_train_batch_size", "must be ≥ 1")
    check(cfg.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be ≥ 1")
    check(cfg.learning_rate > 0, "learning_rate", "must be > 0")
    check(0 <= cfg.warmup_proportion < 1, "warmup_proportion", "must be in [0, 1)")
    check(cfg.nan_policy in ("skip", "stop"), "nan_policy", "use skip or stop")
    check(cfg.resume_mode in ("exact", "weights_only"), "resume_mode", "use exact or weights_only")
    check(cfg.logging_steps >= 1, "logging_steps", "must be ≥ 1")
    check(cfg.save_space_check in ("warn", "stop"), "save_space_check", "use warn or stop")
    check(cfg.dist_timeout_s > 0, "dist_timeout_s", "must be > 0 seconds")
    check(cfg.max_steps > 0 or cfg.num_train_epochs > 0, "num_train_epochs", "must be > 0 unless max_steps > 0")
    check(cfg.prediction_cfg.measure in (1, -1), "prediction_cfg.measure", "use 1 (higher is better) or -1 (lower)")
    check(not (cfg.save_best and cfg.save_steps <= 0), "save_steps",
          "save_best needs periodic checkpoints: set save_steps > 0 or save_best=false")
    check(not (cfg.save_best and not cfg.evaluate_during_training), "save_best",
          "needs evaluations during training: set evaluate_during_training=true")
    check(not (cfg.evaluate_during_training and cfg.eval_steps <= 0), "eval_steps",
          "must be > 0 when evaluate_during_training=true")
    check(not (cfg.evaluate_during_training and not cfg.evaluators), "evaluators",
          "evaluate_during_training=true needs at least one evaluator")
    check(cfg.ds_cfg.train_micro_batch_size_per_gpu == cfg.per_gpu_train_batch_size,
          "ds_cfg.train_micro_batch_size_per_gpu", f"must equal per_gpu_train_batch_size ({cfg.per_gpu_train_batch_size}); "
          "set the batch size with per_gpu_train_batch_size only")
    check(cfg.ds_cfg.gradient_accumulation_steps == cfg.gradient_accumulation_steps,
          "ds_cfg.gradient_accumulation_steps", f"must equal gradient_accumulation_steps ({cfg.gradient_accumulation_steps})")
    check("scheduler" not in cfg.ds_cfg, "ds_cfg.scheduler", "remove it; set lr_scheduler and warmup_steps/warmup_proportion")
    if "train_batch_size" in cfg.ds_cfg:
        data_parallel = world_size // max(1, cfg.sequence_parallel_size)
        expected = cfg.per_gpu_train_batch_size * cfg.gradient_accumulation_steps * data_parallel
        check(cfg.ds_cfg.train_batch_size == expected, "ds_cfg.train_batch_size",
              f"must equal per_gpu_train_batch_size × gradient_accumulation_steps × data-parallel ranks "
              f"(world size / sequence_parallel_size) = {expected}, or be removed")
    model_cfg = cfg.model
    check(model_cfg.attn_implementation in ("eager", "sdpa", "flash_attention_2"), "model.attn_implementation",
          "use eager, sdpa or flash_attention_2")
    check(model_cfg.attn_implementation != "flash_attention_2" or importlib.util.find_spec("flash_attn"),
          "model.attn_implementation",
          "flash_attn is not installed (pip install flash-attn on a CUDA machine) or use sdpa")
    check(not model_cfg.get("load_in_4bit") or (torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")),
          "model.load_in_4bit", "QLoRA (4-bit bitsandbytes weights) needs a CUDA GPU and bitsandbytes; "
          "on CPU train LoRA alone (model.load_in_4bit=false)")
    check(not model_cfg.get("load_in_4bit") or model_cfg.get("use_peft"), "model.load_in_4bit",
          "4-bit weights cannot be trained: set model.use_peft=true")
    check(not cfg.save_merged or model_cfg.get("use_peft"), "save_merged",
          "only a LoRA run (model.use_peft=true) has an adapter to merge")
    check(not (cfg.save_merged and model_cfg.get("load_in_4bit")), "save_merged",
          "a 4-bit base cannot be merged exactly: merge afterwards with python -m models.merge_lora <base> <adapter> <out>")
    check(model_cfg.get("freeze_strategy", "none") in FREEZE_STRATEGIES, "model.freeze_strategy",
          f"use one of {', '.join(FREEZE_STRATEGIES)}")
    check(model_cfg.get("freeze_strategy", "none") == "none" or not model_cfg.get("use_peft"), "model.freeze_strategy",
          "LoRA already freezes the base model: use either model.use_peft or an embeddings-only stage")
    problems.extend(settings_problems(cfg.loss_impl, cfg.loss_chunk_tokens, torch.cuda.is_available()))
    problems.extend(engine_problems(cfg, world_size))
    problems.extend(packing_problems(cfg))
    problems.extend(sequence_parallel_problems(cfg, world_size))
    problems.extend(check_report_to(cfg.report_to))
    problems.extend(target_key_problems(cfg))
    problems.extend(generation_backend_problems(cfg))  # GRPO with vLLM where it cannot run
    for key in ("tokenizer.extra_tokens_file", "tokenizer.merge_tokenizer"):
        path = OmegaConf.select(cfg, key)
        check(path is None or resolve_path(path).exists(), key, "no such file or folder")
    model_dir = resolve_path(cfg.model_name_or_path)
    check((model_dir / "config.json").is_file(), "model_name_or_path",
          "not a local model folder with a config.json (nothing is downloaded)")
    if cfg.do_train:
        if cfg.train_file is None:
            problems.append("train_file=None: do_train=true needs a train_file")
        else:
            try:
                expand_files(OmegaConf.to_object(cfg.train_file) if OmegaConf.is_config(cfg.train_file) else cfg.train_file)
            except DataError as e:
                problems.append(f"train_file={cfg.train_file!r}: {e.reason}")
    if problems:
        raise ConfigError("; ".join(problems))


HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def accepted_parameters(target) -> set[str] | None:
    """Keyword parameters `target` accepts (None: any). A class whose __init__ forwards `**kwargs` to its
    base class accepts the base's parameters too."""
    functions = [cls.__init__ for cls in target.__mro__ if "__init__" in vars(cls)] if inspect.isclass(target) else [target]
    names: set[str] = set()
    for function in functions:
        if function is object.__init__:
            return None
        parameters = inspect.signature(function).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
    return None


def options_declaring(group: str, name: str) -> list[str]:
    """The options of the config group `group` (conf/<group>/*.yaml, a group whose node is named after it, as
    `engine` and `objective`) that declare the key `name`."""
    folder = BASE_CONFIG.parent / group
    if not group.isidentifier() or not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.yaml") if name in (OmegaConf.load(path) or {}))


def target_key_problems(cfg: DictConfig) -> list[str]:
    """Every `_target_` node's keys must be parameters of its target: a typo in a nested key
    (`+model.gradient_checkpoint=true`) is reported here, not after the dataset has been built; a key that
    moved (`model.loss_impl`) is reported with its new name."""
    from hydra.utils import get_object
    problems = []

    def walk(node, key: str) -> None:
        if isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{key}[{index}]")
            return
        if not isinstance(node, dict):
            return
        target = node.get("_target_")
        if isinstance(target, str) and "${" not in target:
            try:
                accepted = accepted_parameters(get_object(target))
            except Exception as e:  # noqa: BLE001 - any import failure is the config's problem to report
                problems.append(f"{key}._target_={target!r}: cannot be imported ({type(e).__name__}: {e})")
                accepted = None
            for name in sorted(set(node) - HYDRA_KEYS - (accepted if accepted is not None else set(node))):
                moved = MOVED_KEYS.get(f"{key}.{name}")
                owners = options_declaring(key, name)
                if moved:
                    problems.append(f"{key}.{name}: now the top-level key '{moved}'; write {moved}={node[name]}")
                elif owners:
                    choice = f"{key}={'|'.join(owners)}"
                    problems.append(f"{key}.{name}={node[name]!r}: a setting of {choice}, not of {target}; select "
                                    f"{choice} or remove it")
                else:
                    close = difflib.get_close_matches(name, sorted(accepted), n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else f"; it takes {', '.join(sorted(accepted))}"
                    problems.append(f"{key}.{name}: not a parameter of {target}{hint}")
        for name, child in node.items():
            walk(child, f"{key}.{name}" if key else str(name))

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return problems


def engine_problems(cfg: DictConfig, world_size: int) -> list[str]:
    """The engine group's choice checks its own settings (training.engine.Engine.problems); a node it cannot be
    built from (an unknown key, a target that does not import) is reported by target_key_problems."""
    from hydra.errors import InstantiationException

    from training.engine import engine_of
    if not OmegaConf.is_dict(cfg.engine):  # a task config of the former form (a top-level `engine: fsdp2`)
        return [f"engine={cfg.engine!r}: the engine is the config group conf/engine/ now: select it in the task "
                f"config's defaults list (- override /engine: {cfg.engine}) or on the command line (engine={cfg.engine})"]
    try:
        engine = engine_of(cfg)
    except InstantiationException:
        return []
    return engine.problems(cfg, world_size)


def packing_problems(cfg: DictConfig) -> list[str]:
    """Packing is chosen once, by the data node's `packing`: base.yaml's collator (data.collators.training_collator)
    picks PackedCollator from it, for the model's attention implementation. A task config's collator stanza of
    the old form, or a collator key set against the data node or the model, is refused in one line."""
    collator = OmegaConf.select(cfg, "collator._target_", default=None)
    packing = bool(OmegaConf.select(cfg, "train_dataset.packing", default=False))
    if collator in ("data.collators.PackedCollator", "data.collators.PaddingCollator"):
        return [f"collator._target_={collator}: the collator is picked by the data node's packing now; remove the "
                f"collator's _target_ and attn_implementation and set train_dataset.packing: "
                f"{str(collator.endswith('PackedCollator')).lower()} (packed rows follow model.attn_implementation)"]
    if collator != "data.collators.training_collator":
        return []  # a collator of the user's own
    if cfg.collator.packing != packing:
        return [f"collator.packing={cfg.collator.packing}: follows train_dataset.packing ({str(packing).lower()}); "
                "set that instead"]
    if cfg.collator.attn_implementation != cfg.model.attn_implementation:
        return [f"collator.attn_implementation={cfg.collator.attn_implementation!r}: follows the model's "
                f"({cfg.model.attn_implementation!r}); set model.attn_implementation instead"]
    return []


def sequence_parallel_problems(cfg: DictConfig, world_size: int) -> list[str]:
    """What DeepSpeed's Ulysses attention (modules/sequence_parallel.py) needs of the world, model and attention."""
    size = cfg.sequence_parallel_size
    if not isinstance(size, int) or size < 1:
        return [f"sequence_parallel_size={size!r}: must be an integer ≥ 1"]
    if size == 1:
        return []
    problems = []
    if world_size % size:
        problems.append(f"sequence_parallel_size={size}: the world size {world_size} is not divisible by it; "
                        f"launch a multiple of {size} ranks")
    attention = cfg.model.attn_implementation
    if attention not in SHARDED_ATTENTION:
        problems.append(f"model.attn_implementation={attention!r}: sequence_parallel_size={size} needs one of "
                        f"{', '.join(SHARDED_ATTENTION)} (eager attention needs the whole 4-D mask)")
    if zero_stage(cfg) == 3 and not OmegaConf.select(cfg, "ds_cfg.zero_optimization.reduce_scatter", default=True):
        problems.append(f"ds_cfg.zero_optimization.reduce_scatter=false: sequence_parallel_size={size} under ZeRO-3 "
                        "needs DeepSpeed's reduce-scatter (its gradient averaging is then known); remove the key")
    config_file = resolve_path(cfg.model_name_or_path) / "config.json"
    if config_file.is_file():
        model_config = json.loads(config_file.read_text())
        text = model_config.get("text_config") or model_config  # multimodal configs nest the language model's
        heads = text.get("num_attention_heads", 0)
        problem = head_problem(heads, text.get("num_key_value_heads", heads), size)
        if problem:
            problems.append(f"sequence_parallel_size={size}: {problem} ({config_file})")
    return problems


def optimizer_steps(num_samples: int, cfg: DictConfig, world_size: int) -> tuple[int, int]:
    """(micro-batches per rank per epoch, total optimizer steps). An epoch is ⌈N / G⌉ optimizer steps of
    G = world × micro batch × accumulation samples (data/sampler.py pads it to whole steps), so the
    number of steps depends on the global batch only, not on how it is split: a run resumed on another
    world size keeps its learning-rate schedule. `world_size` is the data-parallel size."""
    global_batch = world_size * cfg.per_gpu_train_batch_size * cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(num_samples / global_batch)
    micro_per_epoch = steps_per_epoch * cfg.gradient_accumulation_steps
    if cfg.max_steps > 0:
        return micro_per_epoch, cfg.max_steps
    total = math.floor(cfg.num_train_epochs * steps_per_epoch)
    if total < 1:
        raise ConfigError(f"num_train_epochs={cfg.num_train_epochs}: {num_samples} samples in steps of {global_batch} "
                          f"(world {world_size} × batch {cfg.per_gpu_train_batch_size} × accumulation "
                          f"{cfg.gradient_accumulation_steps}) give no complete optimizer step; raise num_train_epochs")
    return micro_per_epoch, total


def deepspeed_config(cfg: DictConfig) -> dict:
    """The resolved `ds_cfg` with the numbers only known at run time filled in."""
    ds = OmegaConf.to_container(cfg.ds_cfg, resolve=True)
    params = ds["optimizer"]["params"]
    if params.get("torch_adam") == "auto":
        params["torch_adam"] = not torch.cuda.is_available()
    return ds


def zero_stage(cfg: DictConfig) -> int:
    return int(OmegaConf.select(cfg, "ds_cfg.zero_optimization.stage", default=0))


def sharded_memory_bytes(num_params: int, precision: str, world_size: int, stage: int) -> dict[str, float]:
    """Rough per-GPU bytes of weights, gradients and optimizer states (activations excluded) when ZeRO stage
    `stage` shards them (each engine says which stage its sharding is like: training.engine.Engine.memory_estimate)."""
    weight_bytes = 4 if precision == "fp32" else 2
    optimizer_bytes = 8 if precision == "fp32" else 12  # Adam m, v (+ fp32 master weights)
    return {
        "weights": num_params * weight_bytes / (world_size if stage >= 3 else 1),
        "gradients": num_params * weight_bytes / (world_size if stage >= 2 else 1),
        "optimizer": num_params * optimizer_bytes / (world_size if stage >= 1 else 1),
    }


def human_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"
