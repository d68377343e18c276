"""A model `_target_` for tests: the tiny LLaMA whose logits become NaN on chosen forward calls."""
import torch

from models.loading import load_causal_lm


def load_with_nan_on_calls(nan_calls: list[int], **kwargs):
    model = load_causal_lm(**kwargs)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] in nan_calls:
            return output * torch.nan
        return output

    model.lm_head.register_forward_hook(poison)
    return model
