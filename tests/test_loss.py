"""The training loss: summed next-token cross entropy over labelled positions."""
import torch
import torch.nn.functional as F

from modules.loss import IGNORE_INDEX, count_label_tokens, token_loss_sum


def test_token_loss_sum_matches_shifted_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 7, 11, requires_grad=True), torch.randint(0, 11, (3, 7))
    labels[0, :4] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    terms = [F.cross_entropy(logits[b, t - 1], labels[b, t], reduction="sum")
             for b in range(3) for t in range(1, 7) if labels[b, t] != IGNORE_INDEX]
    torch.testing.assert_close(token_loss_sum(logits, labels), torch.stack(terms).sum())
    assert int(count_label_tokens(labels)) == len(terms)
    token_loss_sum(logits, labels).backward()
    assert logits.grad[:, -1].abs().sum() == 0  # the last position predicts nothing
