"""Dry runs of several task configs in one process: what `python trainer.py -cp <dir> -cn <name>
dry_run=true ...` prints for each, composed by the same Hydra search path, without paying the torch /
transformers / DeepSpeed imports once per config.

    python -m tests.dry_runs runs.json      # [[config dir, config name, [overrides...]], ...]

prints {"<dir>/<name>": {"stdout": ..., "error": null | "..."}} as JSON on the last line.
"""
import contextlib
import io
import json
import sys
import traceback

from hydra import compose, initialize_config_dir

from tests.trainer_runs import REPO


def dry_run(config_dir: str, name: str, overrides: list[str]) -> dict:
    from trainer import run
    stdout, error = io.StringIO(), None
    try:
        with initialize_config_dir(config_dir=str(REPO / config_dir), version_base="1.3"):
            cfg = compose(config_name=name, overrides=["dry_run=true", *overrides])
        with contextlib.redirect_stdout(stdout):
            run(cfg)
    except Exception:  # noqa: BLE001 - reported per config, the others still run
        error = traceback.format_exc(limit=-3)
    return {"stdout": stdout.getvalue(), "error": error}


def main() -> None:
    runs = json.loads(open(sys.argv[1], encoding="utf-8").read())
    results = {f"{config_dir}/{name}": dry_run(config_dir, name, overrides) for config_dir, name, overrides in runs}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
