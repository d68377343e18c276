"""Paths in configs may be relative to the working directory or to the repository root."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """`path` as given when it exists relative to the working directory, else relative to the repo root
    (so the bundled samples and tiny model are found from any working directory)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    candidate = REPO_ROOT / path
    return candidate if candidate.exists() else path
