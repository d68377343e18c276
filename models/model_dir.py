"""Where a model's files are: local folders only (this trainer never downloads from a hub)."""
from pathlib import Path

from general_util.paths import resolve_path
from general_util.errors import ConfigError


def local_model_dir(name_or_path: str) -> Path:
    path = resolve_path(name_or_path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model_name_or_path={name_or_path!r} is not a local model folder with a config.json "
                          f"(this trainer never downloads from a hub)")
    return path
