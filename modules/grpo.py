"""Group-relative policy optimisation: advantages and the clipped policy-gradient loss, with TRL's names and
definitions (trl 1.16.0, trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions and
_compute_loss), so that numbers compare.

Advantages: the G completions of a prompt form a group; a completion's advantage is its reward minus the group
mean, divided by the group's standard deviation (Bessel-corrected) + 1e-4 (`scale_rewards: group`), by the whole
batch's (`batch`), or not at all (`none`, Dr. GRPO). Completions no reward function could score (NaN) get 0.

Loss per completion token t, ratio r = exp(log π(t) - log π_old(t)):

    -min(r·A, clip(r, 1 - epsilon, 1 + epsilon_high)·A) + beta · r · KL_k3(π_ref ‖ π)

(the factor r on the KL: `use_bias_correction_kl`, TRL's default since the samples come from π_old)

and its aggregation (`loss_type`), as a loss *sum* over the micro-batch and a *normaliser* counted from the batch
alone (the loop divides the global sum by the global count, so the loss does not depend on world size or
accumulation):
- `grpo`: each completion's token mean, averaged over completions (normaliser: completions);
- `dapo`: the token mean over all completion tokens of the global batch (normaliser: tokens);
- `dr_grpo`: the token sum divided by completions × `max_completion_length` (a constant normaliser)."""
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from general_util.dist import gather_objects
from general_util.errors import ConfigError
from modules.generation import needs_synced_generation
from modules.objectives import Objective, ObjectiveOutput

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPSILON = 1e-4  # TRL's: advantages / (std + 1e-4)


def nan_std(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (NaN where fewer than two values)."""
    keep = dim if dim is not None else tuple(range(values.dim()))
    mean = torch.nanmean(values, dim=keep, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=keep, keepdim=True)
    count = (~torch.isnan(values)).sum(dim=keep, keepdim=True)
    variance = variance * torch.where(count > 1, count / (count - 1), torch.full_like(variance, float("nan")))
    return variance.sqrt().squeeze() if dim is None else variance.sqrt().squeeze(dim)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """Advantage of each completion; `rewards` [N·G] holds the G completions of each prompt one after another
    (NaN: unscorable)."""
    if scale_rewards not in SCALE_REWARDS:
        raise ConfigError(f"scale_rewards={scale_rewards!r}: use one of {', '.join(SCALE_REWARDS)}")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards == "group":
        std = nan_std(grouped, dim=1).repeat_interleave(num_generations) if num_generations > 1 \
            else torch.zeros_like(rewards)
        advantages = advantages / (std + STD_EPSILON)
    elif scale_rewards == "batch":
        std = nan_std(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = advantages / (std + STD_EPSILON)
    return torch.nan_to_num(advantages, nan=0.0)


def reward_table(rewards: dict, prompts: list[str], completions: list[str], samples: list[dict],
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every reward function (name -> callable with `.weight`, post_processors/rewards.py) on every completion:
    [N, F] rewards in float64 (None -> NaN) and the [F] weights, in the order of `rewards`."""
    columns = []
    for name, reward in rewards.items():
        values = reward(prompts, completions, samples)
        if len(values) != len(completions):
            raise ConfigError(f"rewards.{name}: {len(values)} rewards for {len(completions)} completions")
        columns.append([float("nan") if v is None else float(v) for v in values])
    weights = torch.tensor([float(reward.weight) for reward in rewards.values()], dtype=torch.float64)
    return torch.tensor(columns, dtype=torch.float64).T.reshape(len(completions), len(rewards)), weights


def weighted_rewards(per_function: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N, F] rewards of F functions -> [N] weighted sum (NaN entries count 0; all-NaN rows stay NaN)."""
    total = (per_function * weights.to(per_function).unsqueeze(0)).nansum(dim=1)
    return total.masked_fill(torch.isnan(per_function).all(dim=1), float("nan"))


@dataclass(frozen=True)
class ClipSettings:
    loss_type: str = "dapo"         # grpo | dapo | dr_grpo
    epsilon: float = 0.2            # lower clip: ratios below 1 - epsilon stop pulling
    epsilon_high: float = 0.2       # upper clip (DAPO's clip-higher: larger than epsilon)
    beta: float = 0.0               # KL coefficient (0: no reference model)
    max_completion_length: int = 256  # dr_grpo's constant normaliser
    use_bias_correction_kl: bool = True  # the KL term times the importance ratio (TRL 1.16's default)

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type={self.loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
        if not 0 <= self.epsilon < 1 or self.epsilon_high < 0:
            raise ConfigError(f"epsilon={self.epsilon}, epsilon_high={self.epsilon_high}: need 0 ≤ epsilon < 1 and "
                              "epsilon_high ≥ 0")
        if self.beta < 0:
            raise ConfigError(f"beta={self.beta}: the KL coefficient must be ≥ 0")


@dataclass
class PolicyLoss:
    loss_sum: torch.Tensor          # differentiable, [] — divide by the global normaliser
    per_token_kl: torch.Tensor | None
    low_clipped: torch.Tensor       # bool [B, T]: ratio < 1 - epsilon with a negative advantage
    high_clipped: torch.Tensor      # bool [B, T]: ratio > 1 + epsilon_high with a positive advantage


def normaliser(mask: torch.Tensor, settings: ClipSettings) -> torch.Tensor:
    """What the loss sum of a micro-batch with completion mask `mask` [B, T] is divided by (summed over ranks
    and the accumulation window before use)."""
    rows = torch.tensor(float(mask.size(0)), dtype=torch.float64)
    if settings.loss_type == "grpo":
        return rows
    if settings.loss_type == "dr_grpo":
        return rows * settings.max_completion_length
    return mask.sum().double().cpu()


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                settings: ClipSettings, ref_logps: torch.Tensor | None = None) -> PolicyLoss:
    """The clipped surrogate of a micro-batch: per-token log-probs [B, T] of the completion tokens under the
    current, sampling (`old`) and reference policies, advantages [B], completion mask [B, T]."""
    advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - settings.epsilon, 1 + settings.epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if settings.beta != 0.0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1  # k3, an unbiased non-negative estimate of KL(π ‖ π_ref)
        if settings.use_bias_correction_kl:  # the samples came from π_old: importance-weight the estimate
            kl = kl * ratio
        per_token = per_token + settings.beta * kl
    mask = mask.to(per_token.dtype)
    if settings.loss_type == "grpo":
        loss_sum = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
    else:
        loss_sum = (per_token * mask).sum()
    return PolicyLoss(loss_sum, kl, (ratio < 1 - settings.epsilon) & (advantages < 0),
                      (ratio > 1 + settings.epsilon_high) & (advantages > 0))


def rollout_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                  pad_to_multiple_of: int | None = None) -> dict:
    """Rows of prompt + completion as TRL lays them out — prompts left-padded, completions right-padded, so
    every completion starts at the same column — with position ids counted from each row's first real token
    (as `generate` counts them) and the completion mask [B, C]."""
    width, length = max(len(p) for p in prompt_ids), max(max(len(c) for c in completion_ids), 1)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    ids, attention, completion_mask = [], [], []
    for prompt, completion in zip(prompt_ids, completion_ids):
        pad_left, pad_right = width - len(prompt), length - len(completion)
        ids.append([pad_id] * pad_left + list(prompt) + list(completion) + [pad_id] * pad_right)
        attention.append([0] * pad_left + [1] * (len(prompt) + len(completion)) + [0] * pad_right)
        completion_mask.append([1] * len(completion) + [0] * pad_right)
    attention_mask = torch.tensor(attention)
    return {"input_ids": torch.tensor(ids), "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "completion_mask": torch.tensor(completion_mask)}


def completion_logps(model, batch: dict, device: torch.device, temperature: float = 1.0,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies [B, C] of the completion tokens of a `rollout_batch`, the
    logits of the completion positions only (`logits_to_keep`)."""
    length = batch["completion_mask"].size(1)
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   position_ids=batch["position_ids"].to(device), logits_to_keep=length + 1, use_cache=False).logits
    return token_logps_and_entropy(logits[:, :-1], batch["input_ids"][:, -length:].to(device), temperature)


def token_logps_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token and the entropy of each position's distribution, from logits
    [B, T, V] aligned with targets [B, T], the logits divided by the sampling temperature first (as TRL)."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logps = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logps, entropy


class GRPO(Objective):
    """`objective: grpo` (conf/objective/grpo.yaml). Before each optimizer step the loop hands the step's prompt
    micro-batches (data.rl_prompts.PromptCollator) to `rollout`: every prompt gets `num_generations` completions
    sampled from the current policy by the `generation_backend` (`GenerationBackend`: the engine's own `generate`,
    every rank stepping in lockstep under ZeRO-3 and FSDP2, or vLLM colocated on the GPU, handed the weights first),
    scored by the `rewards` (name -> post_processors.rewards component), turned into group-relative advantages
    (with `beta` > 0 also the reference's log-probs: the KL penalty, logged as `kl`), and written to
    `<rollouts_dir>/step-<n>.jsonl` by rank 0. The loop then takes `num_iterations` (μ) optimizer updates on these
    rollouts (one loop step = one generation batch = μ updates; the lr schedule counts updates): the first update's
    forward, before any weight changed, gives the sampling policy's log-probs, kept as the ratio's denominator for the
    later ones, whose ratios leave 1 and are clipped (TRL's old_per_token_logps).

    `completion_hook`: test-only, an import path `module:function(prompt_records, completion_ids, tokenizer) ->
    completion ids` replacing the sampled completions (so runs of different world sizes can be compared on the same ones)."""
    name = "grpo"

    def __init__(self, rewards: dict, num_generations: int = 4, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 16, loss_type: str = "dapo", epsilon: float = 0.2, epsilon_high: float = 0.28,
                 scale_rewards: str = "group", beta: float = 0.0, use_bias_correction_kl: bool = True,
                 reference: str = "model", num_iterations: int = 1, rollouts_dir: str | None = None,
                 completion_hook: str | None = None, generation_backend: "GenerationBackend | None" = None):
        if not rewards:
            raise ConfigError("objective.rewards: name at least one reward (post_processors/rewards.py)")
        if num_generations < 2:
            raise ConfigError(f"objective.num_generations={num_generations}: a group needs at least 2 completions")
        if scale_rewards not in ("group", "none"):
            raise ConfigError(f"objective.scale_rewards={scale_rewards!r}: use group or none (a rank holds whole "
                              "groups, so both are exact at any world size)")
        if num_iterations < 1:
            raise ConfigError(f"objective.num_iterations={num_iterations}: must be ≥ 1")
        self.rewards, self.num_generations, self.num_iterations = dict(rewards), num_generations, num_iterations
        self.sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
                         "max_new_tokens": max_new_tokens, "num_beams": 1}
        self.temperature, self.scale_rewards = temperature, scale_rewards
        self.settings = ClipSettings(loss_type, epsilon, epsilon_high, beta, max_new_tokens, use_bias_correction_kl)
        if reference != "model":
            raise ConfigError(f"objective.reference={reference!r}: GRPO scores fresh completions, so its reference is a "
                              "model (the frozen starting weights, or the LoRA base); use reference: model")
        # beta > 0: the trainer attaches `with_reference` (training/reference.py), as for DPO
        self.needs_reference, self.reference_kind = beta != 0.0, reference
        self.rollouts_dir = Path(rollouts_dir) if rollouts_dir else None
        self.completion_hook = completion_hook
        # where completions are sampled: the engine's own generate (default), or vLLM (training/vllm_generation.py)
        self.generation = generation_backend or EngineGeneration()

    # ---- rollouts --------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, window: list[dict], engine, tokenizer, ctx, step: int) -> list[dict]:
        """The step's prompt micro-batches -> scored rollout micro-batches (see the class docstring). `engine`: the
        training engine (training/engine.py): its `model` generates and scores, and a generation backend other than
        the engine's own is handed its current weights first (`GenerationBackend.sync_weights`)."""
        model = engine.model
        was_training = model.training
        model.eval()
        self.generation.sync_weights(engine, ctx)  # every optimizer update so far is in the weights that sample
        batches = [self._rollout_batch(batch["records"], engine, tokenizer, ctx, batch["pad_to_multiple_of"], step)
                   for batch in window]
        self.generation.release()
        model.train(was_training)
        rows = [row for batch in batches for row in batch.pop("rows")]
        gathered = gather_objects(rows)
        if ctx.is_main and self.rollouts_dir is not None:
            self.rollouts_dir.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps(row, ensure_ascii=False) for rank_rows in gathered for row in rank_rows]
            (self.rollouts_dir / f"step-{step + 1}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return batches

    def _rollout_batch(self, records: list[dict], engine, tokenizer, ctx, pad_to_multiple_of: int | None,
                       step: int) -> dict:
        keys = [(step, record["index"], j) for record in records for j in range(self.num_generations)]
        records = [record for record in records for _ in range(self.num_generations)]
        prompt_ids = [record["prompt_ids"] for record in records]
        completion_ids = self.generation.generate(engine, tokenizer, ctx, prompt_ids, self.sampling, keys)
        if self.completion_hook:
            completion_ids = import_path(self.completion_hook)(records, completion_ids, tokenizer)
        completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        prompts = [record["prompt"] for record in records]
        per_function, weights = reward_table(self.rewards, prompts, completions, records)
        rewards = weighted_rewards(per_function, weights)
        advantages = group_advantages(rewards, self.num_generations, self.scale_rewards)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batch = rollout_batch(prompt_ids, completion_ids, pad_id, pad_to_multiple_of)
        lengths = torch.tensor([float(len(c)) for c in completion_ids], dtype=torch.float64)
        clipped = torch.tensor([float(len(c) >= self.sampling["max_new_tokens"] and (not c or c[-1] != tokenizer.eos_token_id))
                                for c in completion_ids], dtype=torch.float64)
        group_std = nan_std(rewards.view(-1, self.num_generations), dim=1)
        stats = {"reward": rewards, "reward_std": group_std,
                 "completions/mean_length": lengths, "completions/clipped_ratio": clipped,
                 **{f"rewards/{name}/mean": per_function[:, i] for i, name in enumerate(self.rewards)},
                 **{f"rewards/{name}/std": nan_std(per_function[:, i].view(-1, self.num_generations), dim=1)
                    for i, name in enumerate(self.rewards)}}
        rows = [{"prompt": p, "completion": c, "rewards": {name: (None if torch.isnan(v).item() else v.item())
                                                           for name, v in zip(self.rewards, per_function[i])},
                 "reward": None if torch.isnan(rewards[i]) else rewards[i].item(), "advantage": advantages[i].item()}
                for i, (p, c) in enumerate(zip(prompts, completions))]
        if self.settings.beta != 0.0:  # the reference's log-probs of the completions, computed once per rollout
            batch["ref_logps"], _ = self.with_reference(
                lambda reference: completion_logps(reference, batch, ctx.device, self.temperature))
        return {**batch, "advantages": advantages, "stats": stats, "rows": rows,
                "index": torch.tensor(sorted({record["index"] for record in records})),
                "num_tokens": int(batch["attention_mask"].sum()), "num_samples": len(records)}

    # ---- the objective seam -----------------------------------------------------------------------------
    def normalisers(self, batch: dict) -> torch.Tensor:
        return normaliser(batch["completion_mask"], self.settings)

    def loss(self, model, batch: dict, settings, device: torch.device) -> ObjectiveOutput:
        mask = batch["completion_mask"].to(device)
        logps, entropy = completion_logps(model, batch, device, self.temperature)
        if "old_logps" not in batch:  # the first update on these rollouts: no update since they were sampled, so
            batch["old_logps"] = logps.detach()  # these are the sampling policy's log-probs (TRL's old_per_token_logps)
        out = policy_loss(logps, batch["old_logps"], batch["advantages"].to(device), mask, self.settings,
                          batch.get("ref_logps"))
        tokens = mask.sum().double()
        metrics = {name: masked_pair(values) for name, values in batch["stats"].items()}
        metrics["entropy"] = ((entropy.detach() * mask).sum().double(), tokens)
        if out.per_token_kl is not None:
            metrics["kl"] = ((out.per_token_kl.detach() * mask).sum().double(), tokens)
        metrics["clip_ratio/region_mean"] = (((out.low_clipped | out.high_clipped) * mask).sum().double(), tokens)
        longest = batch["stats"]["completions/mean_length"].max()  # the lengths of the micro-batch's completions
        return ObjectiveOutput(out.loss_sum, metrics, {"completions/max_length": longest})


def masked_pair(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) over the non-NaN values (the loop averages sums over counts across ranks and steps)."""
    keep = ~torch.isnan(values)
    return values[keep].sum().double(), keep.sum().double()


def import_path(path: str):
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


class GenerationBackend(Protocol):
    """Where GRPO's completions are sampled (`objective.generation_backend`, conf/objective/grpo.yaml). Per rollout,
    on every rank: `sync_weights(engine, ctx)` once, `generate(...)` once per micro-batch, `release()` once.

    - `sync_weights(engine, ctx)`: the policy's current weights (every optimizer update so far) into the backend; a
      collective when the engine shards them.
    - `generate(engine, tokenizer, ctx, prompt_ids, sampling, keys) -> completion ids`: one completion per prompt (token
      ids; prompts repeat G times), each up to and including its first EOS, as TRL's completion ids. `sampling`: the
      transformers `generate` keywords (do_sample, temperature, top_p, top_k, max_new_tokens); `keys`:
      (step, prompt index in the dataset, j < G) naming each completion whatever the rank layout (a backend that
      seeds each request seeds it from these).
    - `release()`: the generations of this rollout are done (vLLM with sleep mode frees its GPU memory)."""
    name: str

    def sync_weights(self, engine, ctx) -> None: ...

    def generate(self, engine, tokenizer, ctx, prompt_ids: list[list[int]], sampling: dict,
                 keys: list[tuple[int, int, int]]) -> list[list[int]]: ...

    def release(self) -> None: ...


class EngineGeneration:
    """The training engine's own model generates (transformers `generate`, on CPU or GPU, every engine; under ZeRO-3
    and FSDP2 with several ranks every rank steps in lockstep, `synced_gpus`). It samples from the training weights
    themselves, so there is nothing to sync; sampling draws from the torch RNG, which checkpoints save and restore."""
    name = "engine"

    def sync_weights(self, engine, ctx) -> None:
        pass

    def generate(self, engine, tokenizer, ctx, prompt_ids, sampling, keys) -> list[list[int]]:
        return sample_completions(engine.model, tokenizer, prompt_ids, sampling, ctx)

    def release(self) -> None:
        pass


def cut_at_eos(tokens: list[int], eos_token_id: int) -> list[int]:
    """`tokens` up to and including the first EOS (all of them without one)."""
    return tokens[:tokens.index(eos_token_id) + 1] if eos_token_id in tokens else tokens


def sample_completions(model, tokenizer, prompt_ids: list[list[int]], sampling: dict, ctx) -> list[list[int]]:
    """Sampled completion ids per prompt, up to and including the first EOS (TRL's completion ids)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompt_ids], device=ctx.device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=ctx.device)
    output = getattr(model, "module", model).generate(
        input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
        use_cache=True, synced_gpus=needs_synced_generation(model, ctx.world_size), **sampling)
    return [cut_at_eos(row, tokenizer.eos_token_id) for row in output[:, width:].tolist()]
