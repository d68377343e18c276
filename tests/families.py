"""The tiny model families (models/tiny.py FAMILIES) as the tests use them: built once per content (the builder,
the published config, the tokenizer files) into .cache/tiny_families/ and shared by test files and workers,
and the trainer overrides that run each with packing."""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from models.tiny import FAMILIES, FIXTURES, build_family
from tests.trainer_runs import REPO

CACHE = REPO / ".cache" / "tiny_families"
TOKENIZER_FILES = {"llama2": "llama2", "mistral": "llama2", "llama3": "llama3"}  # the rest: qwen2
# tokenizers without a pad token of their own get an existing token (no new vocabulary row)
PAD = {"llama3": ["tokenizer.pad_token='<|finetune_right_pad_id|>'"]}
PACKING = ["train_dataset.packing=true", "train_dataset.max_seq_length=64",
           "learning_rate=1e-2", "warmup_proportion=0"]


def fingerprint(name: str) -> str:
    digest = hashlib.sha256()
    folder = FIXTURES / "tokenizers" / TOKENIZER_FILES.get(name, "qwen2")
    builder = [REPO / "models" / "tiny.py", REPO / "models" / "vocab.py"]  # the model, and how its tokenizer is saved
    for path in [*builder, FAMILIES[name].config, *sorted(folder.iterdir())]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def tiny_family(name: str) -> Path:
    """The built tiny `name` model folder (built on first use; a concurrent builder's copy is as good)."""
    path = CACHE / f"{name}-{fingerprint(name)}"
    if not path.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{name}-"))
        build_family(name, staging)
        try:
            os.rename(staging, path)
        except OSError:  # another worker finished first
            shutil.rmtree(staging, ignore_errors=True)
    return path


def family_overrides(name: str) -> list[str]:
    """trainer.py overrides for SFT with packing on the tiny `name` model."""
    return [f"model_name_or_path={tiny_family(name)}"] + PAD.get(name, []) + PACKING
