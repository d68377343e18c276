"""Hugging Face weights of the model being trained: `from_pretrained`-loadable safetensors, the tokenizer and
the resolved training config, in each checkpoint and in `output_dir/best`."""
import logging
from dataclasses import dataclass
from pathlib import Path

from general_util.dist import DistContext
from models.vocab import save_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFExport:
    """What goes beside the weights."""
    tokenizer: object
    config_yaml: str    # the resolved training config, written as training_config.yaml
    save_merged: bool   # a LoRA run also writes the merged full model into <folder>/merged


def save_hf_weights(engine, directory: Path, export: HFExport, ctx: DistContext) -> None:
    """Called on every rank (gathering sharded weights is a collective); global rank 0 writes."""
    state_dict = engine.consolidated_state_dict()
    if ctx.is_main:
        write_hf_weights(engine.module, state_dict, directory, export)


def write_hf_weights(module, state_dict: dict, directory: Path, export: HFExport) -> None:
    """Rank 0's part of `save_hf_weights`. A peft model writes its adapter alone (adapter_model.safetensors +
    adapter_config.json) and, with `save_merged`, the merged full model into `directory/merged`."""
    module.save_pretrained(directory, state_dict=state_dict)
    if export.save_merged:
        from models.lora import merged_copy
        merged_copy(module, state_dict).save_pretrained(directory / "merged")
        save_tokenizer(export.tokenizer, directory / "merged")
    save_tokenizer(export.tokenizer, directory)
    (directory / "training_config.yaml").write_text(export.config_yaml, encoding="utf-8")
    logger.info("wrote Hugging Face weights to %s", directory)
