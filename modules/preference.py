"""Preference objectives (DPO, IPO, conservative DPO, ORPO, SimPO, KTO) on the objective seam of modules/objectives.py,
with TRL's definitions and metric names (trl 1.16.0: trainer/dpo_trainer.py `_compute_loss`,
experimental/orpo/orpo_trainer.py `odds_ratio_loss`, experimental/cpo/cpo_trainer.py `cpo_loss`,
trainer/kto_trainer.py `KTOTrainer._compute_loss`; the parity test is
tests/test_preference_parity.py).

A micro-batch holds B pairs as 2B rows, the chosen sides first (data.collators.PreferenceCollator); only each side's
last response is labelled. A side's log-probability is the sum of its response tokens' log-probabilities (ORPO and
SimPO use the mean per token, as TRL's trainers do). Loss sums come with two normalisers, summed over the global
batch by the loop: [pairs, chosen response tokens]; the second carries the optional SFT term on the chosen side
(`rpo_alpha`: TRL's loss_type "sft" weighted by rpo_alpha, the chosen tokens' mean NLL; ORPO's own NLL term).

`loss_impl` applies: full scores from the logits; chunked and liger (whose fused kernel has no per-token weights)
score with modules.chunked_ce, in two steps inside the one head call: the tokens' log-probabilities without grad,
then the objective's gradient with respect to each token's log-probability (a tiny autograd over the scores) as
the per-token weights of a weighted chunked cross-entropy, whose backward is therefore the objective's.

Reference log-probabilities (DPO, IPO): from the batch (`ref_logps`, precomputed once before training) or from
`reference(inputs)`, a callable the trainer attaches (training/reference.py: a frozen copy under the engine, or the
LoRA model with its adapter disabled).
"""
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from data.collators import model_inputs
from data.labels import IGNORE_INDEX
from general_util.errors import ConfigError
from modules.chunked_ce import chunked_loss_grads, chunked_target_log_probs
from modules.loss import next_token_targets
from modules.loss_impl import LossSettings, head_computes, plain_head, resolve
from modules.objectives import Objective, ObjectiveOutput

DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust")


def pair_targets(batch: dict) -> torch.Tensor:
    return next_token_targets(batch["labels"])


def row_sums(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    return torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def scored_positions(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat positions, their target tokens, their rows) of the labelled next-token targets."""
    flat = targets.reshape(-1)
    positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    return positions, flat[positions], positions // targets.shape[1]


@torch.no_grad()
def reference_logps(model, inputs: dict, targets: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """float64 [rows]: each row's summed log-probability of its labelled tokens (no grad)."""
    positions, tokens, rows = (t.to(inputs["input_ids"].device) for t in scored_positions(targets))
    impl = resolve(model, settings, inputs["input_ids"].device)
    if impl == "full":
        logits = model(**inputs).logits
        picked = logits.reshape(-1, logits.shape[-1]).double().log_softmax(-1)[positions, tokens]
    else:
        compute = (lambda hidden, weight: chunked_target_log_probs(hidden.reshape(-1, hidden.shape[-1]), weight,
                                                                   positions, tokens, settings.chunk_tokens)[0])
        with head_computes(plain_head(model), compute):
            picked = model(**inputs).logits
    return row_sums(picked.double(), rows, targets.shape[0])


class _ChunkedScores(torch.autograd.Function):
    """Loss sums [K] computed from the labelled tokens' log-probabilities; the backward turns the incoming
    gradient [K] into per-token weights (Σ_k grad_k · d loss_k / d log p) of a weighted chunked cross-entropy
    recomputed slice by slice, so no tokens × vocabulary tensor is kept between forward and backward."""

    @staticmethod
    def forward(ctx, hidden, weight, loss_sums, token_grads, positions, tokens, chunk_tokens):
        ctx.save_for_backward(hidden, weight, token_grads, positions, tokens)
        ctx.chunk_tokens = chunk_tokens
        return loss_sums

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, token_grads, positions, tokens = ctx.saved_tensors
        targets = torch.full((hidden.shape[0],), IGNORE_INDEX, dtype=torch.long, device=hidden.device)
        targets[positions] = tokens
        weights = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        # the cross-entropy is -log p: d total = Σ_t g_t · d log p_t = Σ_t (-g_t) · d CE_t
        weights[positions] = -(grad_output.float() @ token_grads)
        grad_hidden, grad_weight = chunked_loss_grads(hidden.detach(), weight.detach(), targets, ctx.chunk_tokens, weights)
        return grad_hidden, grad_weight, None, None, None, None, None


def scored_loss(model, inputs: dict, targets: torch.Tensor, settings: LossSettings,
                reduce: Callable[[torch.Tensor], tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """`reduce(token_logps)` → (loss sums [K], metrics) of the model's fp32 log-probabilities of the labelled
    tokens (row-major order), the loss sums differentiable into the model however `settings` scores."""
    device = inputs["input_ids"].device
    positions, tokens, _ = (t.to(device) for t in scored_positions(targets))
    impl = resolve(model, settings, device)
    if impl == "full":
        logits = model(**inputs).logits.float()
        log_probs = logits.reshape(-1, logits.shape[-1]).log_softmax(-1)
        return reduce(log_probs[positions, tokens])
    extras = {}

    def head(hidden, weight):
        hidden = hidden.reshape(-1, hidden.shape[-1])
        with torch.no_grad():
            values = chunked_target_log_probs(hidden, weight, positions, tokens, settings.chunk_tokens)[0].float()
        with torch.enable_grad():
            values.requires_grad_(True)
            loss_sums, extras["metrics"] = reduce(values)
            token_grads = torch.stack([torch.autograd.grad(loss_sums[k], values, retain_graph=True, allow_unused=True)[0]
                                       if loss_sums[k].requires_grad else torch.zeros_like(values)
                                       for k in range(loss_sums.numel())])
        return _ChunkedScores.apply(hidden, weight, loss_sums.detach(), token_grads.detach(), positions, tokens,
                                    settings.chunk_tokens)

    with head_computes(plain_head(model), head):
        loss_sums = model(**inputs).logits
    return loss_sums, extras["metrics"]


class PairObjective(Objective):
    """The pair objectives' common part: scoring, the SFT term on the chosen side, metrics. Subclasses define
    `pair_losses` (per-pair losses and TRL's rewards) and whether they need a reference."""
    average_logps = False  # ORPO, SimPO: the mean log-probability per response token

    def __init__(self, beta: float = 0.1, rpo_alpha: float = 0.0):
        if beta <= 0:
            raise ConfigError(f"objective.beta={beta}: must be > 0")
        if rpo_alpha < 0:
            raise ConfigError(f"objective.rpo_alpha={rpo_alpha}: must be ≥ 0")
        self.beta, self.rpo_alpha = beta, rpo_alpha
        self.reference: Callable[[dict, torch.Tensor], torch.Tensor] | None = None  # see the module docstring

    def normalisers(self, batch: dict) -> torch.Tensor:
        if "shift_labels" in batch or 2 * int(batch["num_samples"]) != batch["input_ids"].shape[0]:
            raise ConfigError(f"objective {self.name}: the micro-batches must hold pairs (chosen rows, then rejected): "
                              "use train_dataset from conf/data/dpo.yaml, collator._target_=data.collators."
                              "PreferenceCollator and sequence_parallel_size=1")
        targets = pair_targets(batch)
        pairs = targets.shape[0] // 2
        return torch.stack([torch.tensor(float(pairs), dtype=torch.float64),
                            (targets[:pairs] != IGNORE_INDEX).sum().double()])

    def sft_weight(self) -> float:
        return self.rpo_alpha

    def reference_of(self, batch: dict, inputs: dict, targets: torch.Tensor) -> torch.Tensor | None:
        if not self.needs_reference:
            return None
        if "ref_logps" in batch:
            return batch["ref_logps"].to(inputs["input_ids"].device)
        if self.reference is None:
            raise RuntimeError("this objective needs reference log-probabilities: none were precomputed and no "
                               "reference model is attached")
        return self.reference(inputs, targets)

    def loss(self, model, batch: dict, settings: LossSettings, device: torch.device) -> ObjectiveOutput:
        inputs, targets = model_inputs(batch, device), pair_targets(batch).to(device)
        pairs = targets.shape[0] // 2
        _, _, rows = scored_positions(targets)
        lengths = row_sums(torch.ones_like(rows, dtype=torch.float32), rows, targets.shape[0])
        reference = self.reference_of(batch, inputs, targets)

        def reduce(token_logps: torch.Tensor):
            logps = row_sums(token_logps, rows, targets.shape[0])
            if self.average_logps:
                logps = logps / lengths.clamp(min=1)
            ref = None if reference is None else reference.to(logps.dtype)
            losses, chosen_rewards, rejected_rewards = self.pair_losses(
                logps[:pairs], logps[pairs:], None if ref is None else ref[:pairs], None if ref is None else ref[pairs:],
                lengths[:pairs], lengths[pairs:])
            chosen_nll = -token_logps[rows < pairs].sum()
            loss = torch.stack([losses.sum(), self.sft_weight() * chosen_nll])
            return loss, pair_metrics(chosen_rewards, rejected_rewards, logps[:pairs].detach(), logps[pairs:].detach())

        loss_sums, metrics = scored_loss(model, inputs, targets, settings, reduce)
        return ObjectiveOutput(loss_sums, metrics)

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len):
        raise NotImplementedError


def pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict:
    """TRL's metrics as (sum, count) over the pairs."""
    count = torch.tensor(float(chosen_rewards.numel()), dtype=torch.float64)
    sums = {"rewards/chosen": chosen_rewards.sum(), "rewards/rejected": rejected_rewards.sum(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
            "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
            "logps/chosen": chosen_logps.sum(), "logps/rejected": rejected_logps.sum()}
    return {name: (value.detach().double(), count.to(value.device)) for name, value in sums.items()}


class DPO(PairObjective):
    """TRL's DPOTrainer losses: `sigmoid` (DPO; with label_smoothing ε > 0 the conservative DPO of
    cDPO: -(1-ε)·log σ(βΔ) - ε·log σ(-βΔ)), `ipo` (IPO, log-ratios averaged per response token as TRL does),
    `robust` (TRL's label-smoothed robust DPO); Δ = (π_c - ref_c) - (π_r - ref_r); rewards β·(π - ref)."""
    name = "dpo"
    needs_reference = True

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 rpo_alpha: float = 0.0, reference: str = "model"):
        super().__init__(beta, rpo_alpha)
        if loss_type not in DPO_LOSS_TYPES:
            raise ConfigError(f"objective.loss_type={loss_type!r}: use one of {', '.join(DPO_LOSS_TYPES)}")
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"objective.label_smoothing={label_smoothing}: must lie in [0, 0.5)")
        if reference not in REFERENCES:
            raise ConfigError(f"objective.reference={reference!r}: use one of {', '.join(REFERENCES)}")
        self.loss_type, self.label_smoothing, self.reference_kind = loss_type, label_smoothing, reference

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len):
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        delta = chosen_ratio - rejected_ratio
        beta, eps = self.beta, self.label_smoothing
        if self.loss_type == "sigmoid":
            losses = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
        elif self.loss_type == "robust":
            losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
        else:
            ipo = chosen_ratio / chosen_len.clamp(min=1) - rejected_ratio / rejected_len.clamp(min=1)
            losses = (ipo - 1 / (2 * beta)) ** 2
        return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class ORPO(PairObjective):
    """TRL's ORPO: NLL of the chosen response (mean per token) - β·mean log σ(log odds), the log-probabilities
    averaged per token; rewards β·(mean log p). No reference. The NLL is over the chosen response's tokens (the
    ORPO paper's L_SFT, LLaMA-Factory's); TRL's ORPOTrainer also counts the prompt's tokens in it."""
    name = "orpo"
    average_logps = True

    def __init__(self, beta: float = 0.1):
        super().__init__(beta, rpo_alpha=1.0)

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len):
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        return -self.beta * F.logsigmoid(log_odds), self.beta * chosen.detach(), self.beta * rejected.detach()


class SimPO(PairObjective):
    """TRL's CPOTrainer with loss_type=simpo: -(1-ε)·log σ(β(Δ̄ - γ/β)) - ε·log σ(-β(Δ̄ - γ/β)), Δ̄ the difference of
    the mean per-token log-probabilities; rewards β·(mean log p). No reference; `rpo_alpha` is CPO's cpo_alpha."""
    name = "simpo"
    average_logps = True

    def __init__(self, beta: float = 2.0, simpo_gamma: float = 0.5, label_smoothing: float = 0.0,
                 rpo_alpha: float = 0.0):
        super().__init__(beta, rpo_alpha)
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"objective.label_smoothing={label_smoothing}: must lie in [0, 0.5)")
        self.simpo_gamma, self.label_smoothing = simpo_gamma, label_smoothing

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len):
        logits = (chosen - rejected) - self.simpo_gamma / self.beta
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(self.beta * logits) - eps * F.logsigmoid(-self.beta * logits)
        return losses, self.beta * chosen.detach(), self.beta * rejected.detach()


class KTO(Objective):
    """TRL's KTOTrainer (loss_type kto, trl 1.16.0 `_compute_loss`) on unpaired examples (data.collators.KtoCollator):
    r = log p - ref log p of each completion (summed over its tokens), z = max(0, mean over the micro-batch's
    mismatched rows of their log p - ref log p) without gradient (the KL estimate), and per example
    desirable_weight·(1 - σ(β(r - z))) or undesirable_weight·(1 - σ(β(z - r))), averaged over the examples of
    the global batch (TRL: the mean over a device's micro-batch; z is the mean over the ranks' micro-batches
    there, over this micro-batch's rows here). Metrics as TRL logs them: rewards/chosen, rewards/rejected (β·r
    averaged over the desirable / undesirable examples), logps/chosen, logps/rejected, rewards/margins (per
    micro-batch holding both kinds: the difference of the two means), kl. The reference is a model (a frozen
    copy, or the LoRA base): the mismatched rows depend on the micro-batch, so they are not precomputed."""
    name = "kto"
    needs_reference = True

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 reference: str = "model"):
        if beta <= 0:
            raise ConfigError(f"objective.beta={beta}: must be > 0")
        if desirable_weight < 0 or undesirable_weight < 0:
            raise ConfigError(f"objective.desirable_weight={desirable_weight}, undesirable_weight="
                              f"{undesirable_weight}: must be ≥ 0")
        if reference != "model":
            raise ConfigError(f"objective.reference={reference!r}: KTO's reference is a model (its mismatched KL "
                              "rows depend on the micro-batch, so they are not precomputed)")
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight
        self.reference: Callable[[dict, torch.Tensor], torch.Tensor] | None = None

    def normalisers(self, batch: dict) -> torch.Tensor:
        if "kto_label" not in batch:
            raise ConfigError("objective kto: the micro-batches must hold KTO examples: use train_dataset from "
                              "conf/data/kto.yaml and collator._target_=data.collators.KtoCollator")
        if batch["kto_label"].numel() < 2:
            raise ConfigError("objective kto: a micro-batch of one example has no mismatched completion for the KL "
                              "term (TRL refuses it too): set per_gpu_train_batch_size ≥ 2")
        return torch.tensor([float(batch["kto_label"].numel())], dtype=torch.float64)

    def loss(self, model, batch: dict, settings: LossSettings, device: torch.device) -> ObjectiveOutput:
        if self.reference is None:
            raise RuntimeError("objective kto needs a reference model: none is attached")
        inputs, targets = model_inputs(batch, device), pair_targets(batch).to(device)
        kl_inputs = {"input_ids": batch["kl_input_ids"].to(device)}
        kl_targets = next_token_targets(batch["kl_labels"]).to(device)
        kl = (reference_logps(model, kl_inputs, kl_targets, settings) - self.reference(kl_inputs, kl_targets))
        kl = kl.mean().clamp(min=0)
        reference = self.reference(inputs, targets)
        desirable = batch["kto_label"].to(device)
        _, _, rows = scored_positions(targets)

        def reduce(token_logps: torch.Tensor):
            logps = row_sums(token_logps, rows, targets.shape[0])
            ratios = logps - reference.to(logps.dtype)
            z = kl.to(logps.dtype)
            losses = torch.where(desirable, self.desirable_weight * (1 - torch.sigmoid(self.beta * (ratios - z))),
                                 self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z - ratios))))
            return losses.sum().reshape(1), kto_metrics(self.beta * ratios.detach(), logps.detach(), desirable, kl)

        loss_sums, metrics = scored_loss(model, inputs, targets, settings, reduce)
        return ObjectiveOutput(loss_sums, metrics)


def kto_metrics(rewards: torch.Tensor, logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor) -> dict:
    """TRL's KTO metrics as (sum, count): per kind of example, and per micro-batch (margins, kl). Every name is
    reported by every micro-batch (count 0 where it has no such example: the loop skips a name counted 0)."""
    one = torch.ones((), dtype=torch.float64, device=rewards.device)
    metrics = {"kl": (kl.detach().double(), one)}
    means = []
    for kind, mask in (("chosen", desirable), ("rejected", ~desirable)):
        count = mask.sum().double()
        metrics[f"rewards/{kind}"] = (rewards[mask].double().sum(), count)
        metrics[f"logps/{kind}"] = (logps[mask].double().sum(), count)
        means.append(rewards[mask].double().sum() / count.clamp(min=1))
    both = bool(desirable.any() and not desirable.all())
    metrics["rewards/margins"] = ((means[0] - means[1]) * both, one * both)
    return metrics


REFERENCES = ("model", "precomputed")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
