"""`model.gradient_checkpointing: true` really drops activations (recomputed in backward), and does not
change the loss or the gradients."""
import torch

from models.loading import load_causal_lm, load_tokenizer
from modules.loss import token_loss_sum


def saved_activation_bytes_loss_and_grad(gradient_checkpointing: bool):
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="<unk>")
    model = load_causal_lm("models/tiny_llama", torch_dtype="fp32", gradient_checkpointing=gradient_checkpointing,
                           tokenizer=tokenizer)
    model.train()
    saved = []

    def pack(tensor):  # every tensor autograd keeps for backward
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    input_ids = torch.tensor([tokenizer("计算 3 加 5。3 加 5 等于 8。The capital of France is Paris.")["input_ids"]])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = token_loss_sum(model(input_ids=input_ids).logits, input_ids)
    loss.backward()
    return sum(saved), loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone()


def test_checkpointing_saves_fewer_activations_with_equal_loss_and_grads():
    saved_off, loss_off, grad_off = saved_activation_bytes_loss_and_grad(False)
    saved_on, loss_on, grad_on = saved_activation_bytes_loss_and_grad(True)
    assert saved_on < saved_off / 2, (saved_on, saved_off)
    assert abs(loss_on - loss_off) < 1e-5
    torch.testing.assert_close(grad_on, grad_off, atol=1e-6, rtol=1e-5)
