"""Alias of trainer.py, so that older launch commands keep working."""
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("trainer.py")), run_name="__main__")
