"""Small file-writing helpers."""
import json
import os
from pathlib import Path


def write_json_atomic(path: Path, data: dict, **dump_options) -> None:
    """`data` as JSON in `path`, which appears whole or not at all: written to `<path>.tmp`, then renamed. A write
    that fails (disk full, quota, permission) removes the partial `.tmp` file and raises."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, **{"indent": 2, **dump_options})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
