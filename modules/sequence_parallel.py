"""Ulysses sequence parallelism (DeepSpeed's ALST) for Hugging Face causal LMs: `sequence_parallel_size: N`.

N consecutive ranks form a sequence-parallel (SP) group: rank r is SP rank r % N of data-parallel (DP) rank
r // N, as DeepSpeed's `parallel_state_sp` builds the groups. All ranks of a group read the same micro-batch
and keep 1/N of every row (`shard_batch`). Everything but attention then runs on the shard alone;
DeepSpeed's `UlyssesSPAttentionHF` exchanges the shards around attention (all-to-all: each rank attends
over the whole sequence for 1/N of the heads, then gets its shard back), and DeepSpeed, given the groups
as `mpu`, partitions ZeRO states over all ranks and averages gradients over the DP size only.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data.packing import block_causal_mask
from modules.loss import IGNORE_INDEX, next_token_targets

SHARDED_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class ParallelLayout:
    """Where a rank sits: its DP rank and size (what the sampler splits the data over) and its SP rank."""
    dp_rank: int
    dp_size: int
    sp_rank: int
    sp_size: int

    @classmethod
    def of(cls, rank: int, world_size: int, sp_size: int) -> "ParallelLayout":
        return cls(rank // sp_size, world_size // sp_size, rank % sp_size, sp_size)


def initialize_groups(sp_size: int):
    """Create the SP and DP groups; returns the `mpu` for deepspeed.initialize (None when sp_size == 1)."""
    if sp_size == 1:
        return None
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    parallel_state_sp.initialize_sequence_parallel(sp_size)
    return parallel_state_sp


def gradient_mean_size(ds_config: dict, layout: ParallelLayout) -> int:
    """How many ranks DeepSpeed divides the gradient sum over all ranks by (the trainer multiplies it back).
    The data-parallel size (world / sp) in ZeRO 0–2 and ZeRO-3's contiguous all-reduce, but the whole world
    under ZeRO-3's reduce-scatter (its default): deepspeed 0.19.8 stage3.py `__avg_scatter_grads` calls
    `reduce_scatter_coalesced`, which pre-divides by the partition group's size and skips the `/ sp` that
    every other path applies. Which ZeRO-3 path a bucket takes also depends on its size when reduce_scatter
    is off, so config validation refuses that combination."""
    zero = ds_config.get("zero_optimization", {})
    if zero.get("stage", 0) == 3 and zero.get("reduce_scatter", True):
        return layout.dp_size * layout.sp_size
    return layout.dp_size


def head_problem(num_heads: int, num_kv_heads: int, sp_size: int) -> str | None:
    """Why UlyssesSPAttentionHF cannot split these heads over `sp_size` ranks (None: it can). Key/value
    heads may also be fewer than the ranks when they divide them (DeepSpeed then replicates them)."""
    if num_heads % sp_size:
        return f"the model's {num_heads} attention heads are not divisible by it"
    if num_kv_heads % sp_size and sp_size % num_kv_heads:
        return f"the model's {num_kv_heads} key/value heads neither divide nor are divisible by it"
    return None


def shard_batch(batch: dict, layout: ParallelLayout, pad_token_id: int) -> dict:
    """This SP rank's 1/N of every row of a collated batch.

    Labels are shifted before the split (`shift_labels`: each position's next-token target), so the target of
    a shard's last token, the next shard's first, is kept. Position ids are the tokens' positions in the whole
    row (rotary embeddings; a packed sample starts where its position is 0). Rows are padded to a multiple of
    N: the padding continues the last sample without labels, and causal attention lets no real token see it.
    A packing mask is dropped (`register_attention` rebuilds it from the position ids of the whole sequence).
    The group's bookkeeping (`num_tokens`, `num_samples`, `index`) stays on SP rank 0 alone, so that sums over
    all ranks count every sample once."""
    input_ids, size = batch["input_ids"], layout.sp_size
    rows, length = input_ids.shape
    positions = batch.get("position_ids", torch.arange(length).expand(rows, length))
    targets = next_token_targets(batch["labels"])
    pad = -length % size
    if pad:
        input_ids = F.pad(input_ids, (0, pad), value=pad_token_id)
        targets = F.pad(targets, (0, pad), value=IGNORE_INDEX)
        positions = torch.cat([positions, positions[:, -1:] + torch.arange(1, pad + 1)], dim=1)
    width = (length + pad) // size
    part = slice(layout.sp_rank * width, (layout.sp_rank + 1) * width)
    owner = layout.sp_rank == 0
    return {"input_ids": input_ids[:, part].contiguous(), "position_ids": positions[:, part].contiguous(),
            "shift_labels": targets[:, part].contiguous(),
            "index": batch["index"] if owner else batch["index"][:0],
            "num_tokens": batch["num_tokens"] if owner else torch.zeros_like(batch["num_tokens"]),
            "num_samples": batch["num_samples"] if owner else torch.zeros_like(batch["num_samples"])}


def segment_masked(core):
    """`core` (sdpa) attention that keeps packed samples apart: the block-causal mask is rebuilt from the
    whole sequence's position ids (the shards' masks cannot be exchanged); unpacked rows (positions never
    restart) keep the mask-free causal kernel."""
    def attention(module, query, key, value, attention_mask, *args, position_ids=None, **kwargs):
        if position_ids is not None and bool((position_ids[:, 1:] == 0).any()):
            attention_mask = block_causal_mask(torch.cumsum(position_ids == 0, dim=-1))
        return core(module, query, key, value, attention_mask, *args, position_ids=position_ids, **kwargs)
    return attention


def register_attention(model_config, attn_implementation: str, group) -> None:
    """Route the model's attention (`attn_implementation`, looked up by transformers at every call) through
    DeepSpeed's UlyssesSPAttentionHF over `group` while training. This replaces DeepSpeed's
    `register_with_transformers` (same class, same interception point) for three reasons: packed rows under
    sdpa keep their sample boundaries (`segment_masked`; DeepSpeed drops the mask), evaluation (module in
    eval mode, each rank scoring its own whole sequences) calls the plain attention with its mask, and a
    micro-batch of another size (an epoch's last) gets its own wrapper (the class fixes the batch size)."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    core = ALL_ATTENTION_FUNCTIONS[attn_implementation]
    sharded_core = segment_masked(core) if attn_implementation == "sdpa" else core
    text = model_config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    by_batch_size: dict[int, UlyssesSPAttentionHF] = {}

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if not module.training:
            return core(module, query, key, value, attention_mask, *args, **kwargs)
        batch_size = query.shape[0]
        if batch_size not in by_batch_size:
            by_batch_size[batch_size] = UlyssesSPAttentionHF(
                attn=sharded_core, batch_size=batch_size, attn_head_count=text.num_attention_heads,
                attn_head_size=head_dim, kv_head_count=text.num_key_value_heads,
                num_hidden_layers=text.num_hidden_layers, process_group=group, seq_length_is_variable=True)
        return by_batch_size[batch_size](module, query, key, value, None, *args, **kwargs)

    ALL_ATTENTION_FUNCTIONS[attn_implementation] = attention
