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
        window under the metric's name (TRL's names, e.g. `rewards/chosen`, logged as `train/rewards/chosen`).

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
from modules.loss_impl import LossSettings, causal_lm_loss_sum


@dataclass
class ObjectiveOutput:
    loss_sums: torch.Tensor  # differentiable; the shape of the objective's normalisers
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> (sum, count), no grad


class Objective:
    """Base class: see the module docstring. `name` labels the run's logs."""
    name = "objective"
    needs_reference = False  # true: the trainer provides reference log-probabilities (see the module docstring)
    reference_kind = "model"  # with needs_reference: model (objective.reference is attached) | precomputed (rows' ref_logps)

    def normalisers(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, batch: dict, settings: LossSettings, device: torch.device) -> ObjectiveOutput:
        raise NotImplementedError


class CausalLM(Objective):
    """Next-token cross entropy over the labelled tokens (SFT and pretraining; the default): the loss sum over
    a micro-batch's target tokens, normalised by the global batch's target tokens."""
    name = "causal_lm"

    def normalisers(self, batch: dict) -> torch.Tensor:
        return count_targets(batch_targets(batch)).double()

    def loss(self, model, batch: dict, settings: LossSettings, device: torch.device) -> ObjectiveOutput:
        return ObjectiveOutput(causal_lm_loss_sum(model, model_inputs(batch, device), batch_targets(batch), settings))

