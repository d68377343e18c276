"""What a trainer process imports before its first step, imported once by the fork server that
tests/forked_ranks.py and the benchmarks' --fork-workers start processes from (devtools/forked.py: its
children begin with all of it loaded)."""
import importlib.util

import peft  # noqa: F401
import torch.utils.tensorboard  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401

import trainer  # noqa: F401 - torch, Hydra, transformers' configuration, the project

if importlib.util.find_spec("deepspeed") is not None:  # where it is installed (FSDP2 runs without it)
    from training.deepspeed_engine import import_deepspeed
    import_deepspeed()  # with what ZeRO's initialize imports
