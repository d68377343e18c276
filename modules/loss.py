import torch
import torch.nn.functional as F

from data.labels import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over positions whose label is not -100 (fp32 accumulation).
    The caller divides by the number of label tokens of the whole global batch, so the loss does not
    depend on how the batch is split across ranks and accumulation steps."""
    targets = next_token_targets(labels).to(logits.device)
    logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts: the next one, -100 at the last position. The labels are shifted
    (padded), not the logits: slicing the logits would copy them (and their gradient) every step."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def count_label_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of positions `token_loss_sum` counts."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()
