"""Keeping a library's unused optional imports out of a process's start-up."""
import functools
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


@contextmanager
def deferred_torch_compile():
    """Inside the block, `torch.compile(fn, **options)` (and the `@torch.compile(**options)` decorator) returns a
    function that compiles `fn` with those options on its first call instead of at once, so a library that
    decorates kernels it may never run does not load TorchInductor at import. torch.compile is restored after."""
    import torch

    compile_now = torch.compile

    def compile_on_first_call(model=None, **options):
        if model is None:
            return lambda function: compile_on_first_call(function, **options)
        compiled = None

        @functools.wraps(model)
        def call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(model, **options)
            return compiled(*args, **kwargs)
        return call

    torch.compile = compile_on_first_call
    try:
        yield
    finally:
        torch.compile = compile_now
