"""Command-line habits of the original trainer, turned into Hydra overrides.

The original PandaLLM trainer turned every `--key=value` argument into the Hydra override `key=value`,
and users' launch scripts still pass them so (often with HF-style `--key value` too). Hydra's own
options (`--config-path`, `-cn`, `--multirun`, …) are left alone."""
import os
import sys
from pathlib import Path

# Keys that moved (old → new). Written on the command line as before, they reach the preflight, which names
# the new key (training.config.target_key_problems), instead of Hydra's multi-line "not in struct" error.
MOVED_KEYS = {"model.loss_impl": "loss_impl", "model.loss_chunk_tokens": "loss_chunk_tokens",
              "model.save_merged": "save_merged"}
# The engine is the config group conf/engine/ (the node `engine`: its option's `_target_` and keys). The FSDP2
# settings were the top-level block `fsdp2.*`: written so, they are converted to `engine.*`. Engine keys are forced
# in (`++engine.key=value`): a key of the other engine's option, or a typo, then reaches the preflight, which names
# it in one line (training.config.target_key_problems), instead of Hydra's multi-line "not in struct" error.
ENGINE_GROUP = Path(__file__).resolve().parents[1] / "conf" / "engine"
MOVED_PREFIXES = {"fsdp2.": "engine."}
HYDRA_OPTIONS = {"help", "hydra-help", "version", "cfg", "resolve", "package", "run", "multirun",
                 "shell-completion", "config-path", "config-name", "config-dir", "experimental-rerun", "info"}


def let_moved_key_through(override: str) -> str:
    """`model.loss_impl=x` → `++model.loss_impl=x` (a key of MOVED_KEYS forced in, for the preflight to report);
    `engine.key=x` → `++engine.key=x`, and the old `fsdp2.key=x` so too."""
    key, is_override, value = override.lstrip("+").partition("=")
    for old, new in MOVED_PREFIXES.items():
        key = new + key.removeprefix(old) if is_override and key.startswith(old) else key
    return f"++{key}={value}" if is_override and (key in MOVED_KEYS or key.startswith("engine.")) else override


def engine_option_problem(argv: list[str]) -> str | None:
    """`engine=<name>` with no conf/engine/<name>.yaml, in one line (Hydra's own error spans several)."""
    options = sorted(path.stem for path in ENGINE_GROUP.glob("*.yaml"))
    for arg in argv[1:]:
        key, is_override, value = arg.partition("=")
        if key.lstrip("+~") == "engine" and is_override and value not in options:
            return f"engine={value}: use one of {', '.join(options)} (conf/engine/)"
    return None


def legacy_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """argv with `--key=value` → `key=value`, `--key value` → `key=value` and a bare `--flag` (followed by
    another option or nothing) → `flag=true`, and a moved key let through (`let_moved_key_through`); also
    returns the (given, converted) pairs."""
    kept, converted, i = [argv[0]] if argv else [], [], 1
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if not arg.startswith("--") or not name or name in HYDRA_OPTIONS:
            kept.append(let_moved_key_through(arg))
            i += 1
            continue
        if "=" in arg:
            given, override = arg, arg[2:]
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
            given, override = f"{arg} {argv[i + 1]}", f"{name}={argv[i + 1]}"
            i += 1
        else:
            given, override = arg, f"{name}=true"
        kept.append(let_moved_key_through(override))
        converted.append((given, override))
        i += 1
    return kept, converted


def convert_legacy_arguments(argv: list[str]) -> list[str]:
    """`legacy_overrides`, with one note on stderr (from the first rank only) listing what was converted (an old
    `fsdp2.key=value` too); an unknown engine stops here in one line (exit 2)."""
    kept, converted = legacy_overrides(argv)
    converted += [(arg, new + arg.lstrip("+").removeprefix(old)) for arg in argv[1:]
                  for old, new in MOVED_PREFIXES.items() if arg.lstrip("+").startswith(old)]
    if converted and os.environ.get("RANK", "0") == "0":
        print("note: converted to Hydra overrides: " + ", ".join(f"{given} → {override}" for given, override in converted),
              file=sys.stderr)
    problem = engine_option_problem(kept)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return kept
