"""What a trainer process imports and builds before its first step, done once by the fork server that
tests/forked_ranks.py and the benchmarks' --fork-workers start processes from (devtools/forked.py: its
children begin with all of it loaded): the imports, and the first-use work every rank would otherwise repeat
after the fork (Hydra's first composition, transformers' table of checkpoint key patterns)."""
import importlib.util
from pathlib import Path

import peft  # noqa: F401
import torch.utils.tensorboard  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
import transformers.optimization  # noqa: F401 - the trainer's set-up imports it on first use
import transformers.trainer_pt_utils  # noqa: F401 - likewise
from hydra import compose, initialize_config_dir
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

import data.preference  # noqa: F401 - the configs' _target_s, imported on first use
import data.sft  # noqa: F401
import models.lora  # noqa: F401
import post_processors.loss  # noqa: F401
import trainer  # noqa: F401 - torch, Hydra, transformers' configuration, the project

if importlib.util.find_spec("deepspeed") is not None:  # where it is installed (FSDP2 runs without it)
    from training.deepspeed_engine import import_deepspeed
    import_deepspeed()  # with what ZeRO's initialize imports
    import deepspeed.module_inject.auto_ep_config  # noqa: F401 - imported by every engine's initialize
    import deepspeed.module_inject.auto_ep_layer  # noqa: F401
    import deepspeed.runtime.sequence_parallel.ulysses_sp  # noqa: F401 - by modules/sequence_parallel.py's set-up
    import deepspeed.runtime.superoffload.superoffload_stage3  # noqa: F401 - imported by ZeRO-3's initialize
if importlib.util.find_spec("lm_eval") is not None:  # the lm_eval evaluator's first import (requirements-lm-eval.txt)
    import lm_eval.tasks  # noqa: F401

# Hydra's first composition discovers its plugins and the config search path and warms its override grammar's
# parser; transformers builds its ~1,000 compiled checkpoint key patterns at the first from_pretrained
with initialize_config_dir(config_dir=str(Path(trainer.__file__).parent / "conf" / "demo"), version_base="1.3"):
    compose(config_name="sft", overrides=["max_steps=1"])
get_checkpoint_conversion_mapping("llama")
