"""Adds the repository's `conf/` to Hydra's search path, so a task config under `conf/llama/zh`
or `conf/demo` can compose the shared groups (`deepspeed/`, `model/`, `eval/`, `base`)."""
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ProjectConfSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="llama-trainer", path=f"file://{CONF_DIR}")
