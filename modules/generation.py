"""Batched generation of continuations: prompts left-padded, only the new tokens decoded."""
import torch
from torch.distributed.fsdp import FSDPModule

DEFAULT_GENERATION = {"max_new_tokens": 16, "num_beams": 1, "do_sample": False}


def needs_synced_generation(model, world_size: int) -> bool:
    """Whether `generate` must keep every rank stepping until all are done (`synced_gpus`): with more than one
    rank, a DeepSpeed engine under ZeRO-3 and an FSDP2 model gather their parameters inside every forward call."""
    zero3 = getattr(model, "zero_optimization_partition_weights", None)
    return world_size > 1 and (isinstance(model, FSDPModule) or (callable(zero3) and bool(zero3())))


@torch.no_grad()
def generate_continuations(model, tokenizer, prompts: list[list[int]], generation: dict, device: torch.device,
                           synced_gpus: bool = False, with_prompt: bool = False) -> list[str]:
    """The text each prompt (token ids) continues with — never the prompt itself unless `with_prompt` (then
    the decoded prompt + continuation, as one sequence). `model` is a HF model or a DeepSpeed engine (its
    `module` generates). `synced_gpus` keeps every rank stepping until all are done, which ZeRO-3 and FSDP2
    need with more than one rank (parameters are gathered inside forward)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    output = getattr(model, "module", model).generate(
        input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad_id, use_cache=True,
        synced_gpus=synced_gpus, **{**DEFAULT_GENERATION, **generation})
    if with_prompt:
        return [tokenizer.decode(row[width - len(p):], skip_special_tokens=True) for row, p in zip(output, prompts)]
    return tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
