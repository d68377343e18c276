"""Keeping a library's unused optional imports out of a process's start-up."""
import sys
from contextlib import contextmanager


@contextmanager
def hidden_modules(*names: str):
    """Inside the block, `import <name>` raises ImportError for each module not imported yet, so a library's
    `try: import x / except ImportError` fallback runs instead of a costly import; afterwards they import
    normally. Modules already imported stay as they are."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # the import system's "known to be missing"
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
