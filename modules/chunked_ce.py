"""Cross-entropy straight from the final hidden states and the output head's weight, a slice of tokens at a
time, so that no tokens × vocabulary tensor larger than one slice ever exists (the approach of
Liger-Kernel's fused linear cross-entropy, in plain torch so that it also runs on CPU).

Training: the forward pass computes, slice by slice, the summed loss and its gradients with respect to the
hidden states and the weight (softmax minus one-hot, fp32), and keeps only those gradients; the backward
pass scales them by the incoming gradient. Positions labelled -100 are skipped altogether.
Scoring: the float64 log-probabilities of given tokens at given positions, slice by slice, without grad.
"""
import torch
import torch.nn.functional as F

from modules.loss import IGNORE_INDEX


def _slice(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, with_grads: bool,
           token_weights: torch.Tensor | None = None):
    """(summed loss fp32, d loss / d h, d loss / d weight) of one slice; the gradients are None unless
    `with_grads`. Its [slice, V] logits live only inside this call (a loop variable would keep the previous
    slice's alive while the next one is computed)."""
    logits = F.linear(h, weight).float()
    target_logits, peak = logits.gather(1, target), logits.amax(dim=-1, keepdim=True)
    probs = logits.sub_(peak).exp_()  # unnormalised, in place (a stable log-sum-exp without a copy)
    total = probs.sum(dim=-1, keepdim=True)
    losses = total.log() + peak - target_logits
    loss = (losses.sum() if token_weights is None else (losses * token_weights).sum())
    if not with_grads:
        return loss, None, None
    grad = probs.div_(total)  # the softmax
    grad.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad.dtype))  # minus the one-hot
    if token_weights is not None:
        grad.mul_(token_weights)
    grad = grad.to(h.dtype)
    return loss, grad @ weight, grad.T @ h


def _slices(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
            with_grads: bool, token_weights: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(summed loss fp32, d loss / d hidden, d loss / d weight) over the positions whose target is not -100;
    the gradients are None unless `with_grads`. hidden [N, H], weight [V, H], targets [N]; `token_weights` [N]
    (fp32, optional): each position's loss counts that many times (a preference objective's d loss / d log p)."""
    rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden) if with_grads else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if with_grads else None  # fp32 across slices
    for start in range(0, rows.numel(), chunk_tokens):
        index = rows[start:start + chunk_tokens]
        slice_loss, slice_grad_hidden, slice_grad_weight = _slice(
            hidden[index], weight, targets[index, None], with_grads,
            None if token_weights is None else token_weights[index, None])
        loss += slice_loss
        if with_grads:
            grad_hidden.index_copy_(0, index, slice_grad_hidden)
            grad_weight += slice_grad_weight
    return loss, grad_hidden, (grad_weight.to(weight.dtype) if with_grads else None)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, token_weights=None):
        loss, grad_hidden, grad_weight = _slices(hidden, weight, targets, chunk_tokens, True, token_weights)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors  # used once: scaled in place (no retain_graph)
        return grad_hidden.mul_(grad_output), grad_weight.mul_(grad_output), None, None, None


def chunked_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                     token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of `F.linear(hidden, weight)` against `targets` (-100: ignored), fp32, as
    `F.cross_entropy(..., reduction="sum")` on the full logits. hidden [N, H], weight [V, H], targets [N];
    `token_weights` [N]: a weighted sum instead."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, token_weights)
    return _slices(hidden, weight, targets, chunk_tokens, False, token_weights)[0]


@torch.no_grad()
def chunked_loss_grads(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                       token_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/d hidden, d/d weight) of the weighted summed cross-entropy, computed slice by slice (a backward pass that
    recomputes the logits instead of keeping them)."""
    _, grad_hidden, grad_weight = _slices(hidden, weight, targets, chunk_tokens, True, token_weights)
    return grad_hidden, grad_weight


@torch.no_grad()
def chunked_target_log_probs(hidden: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor,
                             tokens: torch.Tensor, chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log-softmax of `F.linear(hidden, weight)` read at (positions[i], tokens[i]) for every i, and
    whether tokens[i] is the argmax at positions[i]. hidden [N, H]; a position may be read for several tokens."""
    picked = torch.empty(positions.numel(), dtype=torch.float64, device=hidden.device)
    is_argmax = torch.empty(positions.numel(), dtype=torch.bool, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_tokens):
        wanted = (positions >= start) & (positions < start + chunk_tokens)
        log_probs = F.linear(hidden[start:start + chunk_tokens], weight).double().log_softmax(dim=-1)
        rows = positions[wanted] - start
        picked[wanted] = log_probs[rows, tokens[wanted]]
        is_argmax[wanted] = log_probs[rows].argmax(dim=-1) == tokens[wanted]
        del log_probs  # before the next slice's are computed
    return picked, is_argmax
