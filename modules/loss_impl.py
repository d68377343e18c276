"""How a causal LM's next-token loss (and the evaluators' log-probabilities) are computed: `loss_impl` and
`loss_chunk_tokens` (conf/base.yaml), passed as a `LossSettings` to every call that runs the model for a loss.

    full     the model's logits, then `target_loss_sum`: a tokens × vocabulary tensor, and its gradient
    chunked  modules.chunked_ce from the final hidden states and the head's weight, loss_chunk_tokens at a time
    liger    Liger-Kernel's fused linear cross-entropy (Triton, CUDA only; pip install -r requirements-liger.txt)
    auto     liger where it is usable, else chunked; full where the head cannot be replaced (`plain_head`)

chunked and liger change what the output head returns for the duration of one forward call: the model runs
as usual (peft, gradient checkpointing, packed inputs pass through untouched) and its head, still called as a
module on the final hidden states, returns the loss instead of the logits. Calling the head as a module is
what keeps ZeRO-3 right: DeepSpeed gathers the partitioned head weight once for that call (not per slice)
and again for its backward, where the weight gradient is reduced into the partition as any layer's is.
Scoring (log-probabilities of chosen tokens) uses the chunked kernel under chunked and liger alike.

Mixture-of-experts models (a config with `router_aux_loss_coef`: Qwen2-MoE, Qwen3-MoE, Mixtral) also give the
routers' load-balancing loss of the same forward call (`causal_lm_loss_terms`): the routers' logits are recorded
as transformers records them (`_can_record_outputs["router_logits"]`) and passed to the family's own
`load_balancing_loss_func`, without an attention mask. That is transformers' `aux_loss` for the inputs the
trainer's collators give (no mask, or a packed row's 4-D block mask, which transformers' `output_router_logits`
path cannot take); the trainer adds it to the objective with its coefficient.
"""
import functools
import importlib.util
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from general_util.errors import ConfigError
from modules.chunked_ce import chunked_loss_sum, chunked_target_log_probs
from modules.loss import target_loss_sum

logger = logging.getLogger(__name__)
LOSS_IMPLS = ("auto", "full", "chunked", "liger")
# Families whose causal-LM forward ends in a bare `logits = lm_head(hidden)` (no soft-capping or scaling).
PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral")


def settings_problems(impl: str, chunk_tokens: int, cuda: bool) -> list[str]:
    """What is wrong with `loss_impl` / `loss_chunk_tokens` on this machine (one line each)."""
    problems = []
    if impl not in LOSS_IMPLS:
        problems.append(f"loss_impl={impl!r}: use one of {', '.join(LOSS_IMPLS)}")
    elif impl == "liger" and liger_problem(cuda):
        problems.append(f"loss_impl='liger': {liger_problem(cuda)}; or use loss_impl=chunked")
    if chunk_tokens < 1:
        problems.append(f"loss_chunk_tokens={chunk_tokens}: must be ≥ 1")
    return problems


@dataclass(frozen=True)
class LossSettings:
    """`loss_impl` and `loss_chunk_tokens`; checked once, when built (a ConfigError naming the key)."""
    impl: str = "full"
    chunk_tokens: int = 1024

    def __post_init__(self):
        problems = settings_problems(self.impl, self.chunk_tokens, torch.cuda.is_available())
        if problems:
            raise ConfigError("; ".join(problems))


def liger_problem(cuda: bool) -> str | None:
    if not cuda:
        return "Liger-Kernel's Triton kernels need a CUDA GPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install -r requirements-liger.txt)"
    return None


def causal_lm(model) -> nn.Module:
    """The transformers causal LM inside a DeepSpeed engine (`.module`) and/or a peft wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_head(model) -> nn.Linear | None:
    """The output head when the chunked and liger kernels can stand in for it: a bias-free nn.Linear itself
    (not a LoRA or 4-bit wrapper) of a family in PLAIN_HEAD_MODEL_TYPES."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    if type(head) is nn.Linear and head.bias is None and lm.config.model_type in PLAIN_HEAD_MODEL_TYPES:
        return head
    return None


@functools.cache
def announce(message: str) -> None:
    logger.info(message)


def resolve(model, loss: LossSettings, device: torch.device) -> str:
    """full, chunked or liger: what `loss.impl` comes to for this model on `device`."""
    impl = loss.impl
    if impl == "full":
        return impl
    head = plain_head(model)
    if head is None:
        lm = causal_lm(model)
        why = (f"its output head is a {type(lm.get_output_embeddings()).__name__} of a {lm.config.model_type!r} model, "
               f"not a plain linear head of {', '.join(PLAIN_HEAD_MODEL_TYPES)}")
        if impl != "auto":
            raise ConfigError(f"loss_impl={impl!r} cannot apply: {why}; use loss_impl=full or auto")
        announce(f"loss_impl=auto: full ({why})")
        return "full"
    problem = liger_problem(device.type == "cuda")
    if impl == "liger" and problem:
        raise ConfigError(f"loss_impl='liger': {problem}; or use loss_impl=chunked")
    if impl == "auto":
        impl = "chunked" if problem else "liger"
        announce(f"loss_impl=auto: {impl}" + (f" ({problem})" if problem else ""))
    return impl


@contextmanager
def head_computes(head: nn.Linear, compute):
    """While active, calling `head` returns `compute(hidden, head.weight)` instead of the logits (the
    module's hooks, ZeRO-3's among them, still run around the call)."""
    head.forward = lambda hidden: compute(hidden, head.weight)
    try:
        yield
    finally:
        del head.forward  # the class's forward again


def liger_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    return LigerFusedLinearCrossEntropyLoss(reduction="sum", accum_dtype=torch.float32)(weight, hidden, targets)


def router_aux_loss_coef(model) -> float | None:
    """The load-balancing loss coefficient of a mixture-of-experts model's config; None for a dense model."""
    return getattr(causal_lm(model).config, "router_aux_loss_coef", None)


@contextmanager
def router_loss_recorder(model):
    """While active, each forward call's router logits are appended to the yielded list; `router_aux_loss` turns
    them into the load-balancing loss."""
    lm = causal_lm(model)
    spec = lm._can_record_outputs["router_logits"]
    logits = []
    hooks = [m.register_forward_hook(lambda module, args, output: logits.append(output[spec.index]))
             for m in lm.modules() if isinstance(m, spec.target_class)]
    try:
        yield logits
    finally:
        for hook in hooks:
            hook.remove()


def router_aux_loss(model, router_logits: list[torch.Tensor]) -> torch.Tensor:
    """The family's own load_balancing_loss_func over every token of the call (no mask)."""
    lm = causal_lm(model)
    config = lm.config
    experts = getattr(config, "num_experts", None) or config.num_local_experts
    # the modeling module of the family's class (FSDP2 subclasses it in a module of its own)
    balancing = next(getattr(sys.modules[cls.__module__], "load_balancing_loss_func") for cls in type(lm).__mro__
                     if hasattr(sys.modules[cls.__module__], "load_balancing_loss_func"))
    return balancing(tuple(router_logits), experts, config.num_experts_per_tok, None)


def causal_lm_loss_terms(model, inputs: dict, targets: torch.Tensor, loss: LossSettings,
                         router_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`causal_lm_loss_sum` and, for a mixture-of-experts model (`router_aux_loss_coef`) when `router_loss`,
    the routers' load-balancing loss of the same forward call (transformers' `aux_loss`: one value for the
    whole micro-batch, not multiplied by the coefficient); None for a dense model."""
    if not (router_loss and router_aux_loss_coef(model) is not None):
        return causal_lm_loss_sum(model, inputs, targets, loss), None
    with router_loss_recorder(model) as router_logits:
        loss_sum = causal_lm_loss_sum(model, inputs, targets, loss)
    return loss_sum, router_aux_loss(model, router_logits)


def causal_lm_loss_sum(model, inputs: dict, targets: torch.Tensor, loss: LossSettings) -> torch.Tensor:
    """`target_loss_sum` of the model's predictions for `inputs` (a DeepSpeed engine, peft or plain model)
    against each position's next-token `targets` (`modules.loss.batch_targets`), computed as `loss` says."""
    device = inputs["input_ids"].device
    impl = resolve(model, loss, device)
    if impl == "full":
        return target_loss_sum(model(**inputs).logits, targets)
    targets = targets.to(device).reshape(-1)

    def loss_sum(hidden, weight):
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if hidden.shape[0] != targets.shape[0]:
            raise RuntimeError(f"the head saw {hidden.shape[0]} positions for {targets.shape[0]} labels")
        if impl == "liger":
            return liger_loss_sum(hidden, weight, targets)
        return chunked_loss_sum(hidden, weight, targets, loss.chunk_tokens)

    with head_computes(plain_head(model), loss_sum):
        return model(**inputs).logits  # what the head returned: the loss sum


def target_log_probs(model, inputs: dict, positions: torch.Tensor, tokens: torch.Tensor,
                     loss: LossSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log-probability of tokens[i] at positions[i], an index into the positions whose logits the
    model returns (all of them, or those of `inputs["logits_to_keep"]` in row-major order), and whether
    tokens[i] is the most probable token there (computed as `loss` says)."""
    impl = resolve(model, loss, inputs["input_ids"].device)
    if impl == "full":
        log_probs = model(**inputs).logits.double().log_softmax(dim=-1)
        log_probs = log_probs.reshape(-1, log_probs.shape[-1])
        return log_probs[positions, tokens], log_probs[positions].argmax(dim=-1) == tokens
    log_probs = (lambda hidden, weight: chunked_target_log_probs(hidden.reshape(-1, hidden.shape[-1]), weight,
                                                                   positions, tokens, loss.chunk_tokens))
    with head_computes(plain_head(model), log_probs):
        return model(**inputs).logits
