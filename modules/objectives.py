"""Training objectives: what the loop in trainer.py optimises, chosen in YAML (`objective:`, conf/objective/*.yaml,
a `_target_` node instantiated once per run). The loop owns everything else: the normalisation over ranks and
accumulation (one collective per optimizer step), the NaN guard, logging, evaluation, checkpoints and resume.

The interface (two calls per micro-batch; a new objective subclasses `Objective`):

    normalisers(batch) -> float64 tensor, shape [] or [k]
        What each loss sum is divided by, counted from the micro-batch alone, before any forward (causal LM:
        its target tokens; preference: its pairs). The loop sums them over the accumulation window, adds them
        over all ranks in the step's one collective, and scales every micro-batch's loss sums by 1 / the global
        count, so the step's loss is independent of world size and accumulation.
    loss(model, batch, settings, device) -> ObjectiveOutput
        `model`: the engine's model (DeepSpeed engine, FSDP2 module, peft model, plain module), called as
        `model(**inputs)` with the batch's inputs moved to `device`; `settings`: the run's `modules.loss_impl.LossSettings` (loss_impl / loss_chunk_tokens),
        honoured by every objective that scores sequences. Returns the loss sums (the shape of `normalisers`;
        the step's loss is Σ_k sum_k / global normaliser_k, and its gradient is what the loop back-propagates)
        and named metrics as (sum, count) pairs: the loop logs Σ sum / Σ count over ranks and the steps of a log
        window under the metric's name (TRL's names, e.g. `rewards/chosen`, logged as `train/rewards/chosen`);
        and, where a mean is not the statistic, named maxima: the loop logs the largest over ranks and the log
        window's steps (e.g. GRPO's `completions/max_length`; an objective without maxima adds no collective).

Objectives that need a reference model set `needs_reference = True` and `reference_kind` ("model" or
"precomputed"); before training the trainer (training/reference.py `attach_reference`) sets
`objective.reference(inputs, targets) -> float64 log-probabilities per row` (a frozen copy under the engine, or the
LoRA model with its adapter disabled), or, for "precomputed", makes every row carry `ref_logps`
(modules/preference.py reads either). The causal LM needs none.
"""
from dataclasses import dataclass, field

import torch

from data.collators import model_inputs
from modules.loss import batch_targets, count_targets
from modules.loss_impl import LossSettings, causal_lm_loss_terms


@dataclass
class ObjectiveOutput:
    loss_sums: torch.Tensor  # differentiable; the shape of the objective's normalisers
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> (sum, count), no grad
    maxima: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> a value logged as its maximum, no grad


class Objective:
    """Base class: see the module docstring. `name` labels the run's logs."""
    name = "objective"
    needs_reference = False  # true: the trainer provides reference log-probabilities (see the module docstring)
    router_loss_coef: float | None = None  # set by the trainer for a mixture-of-experts model (None: dense)
    reference_kind = "model"  # with needs_reference: model (objective.reference is attached) | precomputed (rows' ref_logps)

    def normalisers(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, batch: dict, settings: LossSettings, device: torch.device) -> ObjectiveOutput:
        raise NotImplementedError


class CausalLM(Objective):
    """Next-token cross entropy over the labelled tokens (SFT and pretraining; the default): the loss sum over
    a micro-batch's target tokens, normalised by the global batch's target tokens. For a mixture-of-experts model
    (`router_loss_coef` set) a second loss term adds coefficient × the routers' load-balancing loss (transformers'
    `aux_loss`, one value per micro-batch) normalised by the global batch's micro-batches, i.e. its mean over them,
    logged unweighted as `aux_loss`."""
    name = "causal_lm"

    def normalisers(self, batch: dict) -> torch.Tensor:
        tokens = count_targets(batch_targets(batch)).double()
        if self.router_loss_coef is None:
            return tokens
        return torch.stack([tokens, torch.ones((), dtype=torch.float64, device=tokens.device)])

    def loss(self, model, batch: dict, settings: LossSettings, device: torch.device) -> ObjectiveOutput:
        loss_sum, aux = causal_lm_loss_terms(model, model_inputs(batch, device), batch_targets(batch), settings,
                                             self.router_loss_coef is not None)
        if aux is None:
            return ObjectiveOutput(loss_sum)
        one = torch.ones((), dtype=torch.float64, device=aux.device)
        return ObjectiveOutput(torch.stack([loss_sum, self.router_loss_coef * aux.to(loss_sum.dtype)]),
                               {"aux_loss": (aux.detach(), one)})
