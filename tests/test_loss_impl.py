"""loss_impl: the chunked loss (and scoring) equal the full-logits path in fp32 — loss and the gradient of
every trainable parameter — for plain, tied, LoRA, checkpointed and packed models; no tokens × vocabulary
tensor beyond one slice exists under chunked; auto/liger resolve as documented."""
import copy
import json
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig, AutoModelForCausalLM

from data.collators import PackedCollator, PaddingCollator, model_inputs
from general_util.errors import ConfigError
from models.loading import load_causal_lm, load_tokenizer
from modules.loss import IGNORE_INDEX, next_token_targets
from modules.loss_impl import LossSettings, announce, causal_lm_loss_sum, resolve
from modules.scoring import encode_options, score_requests
from tests.trainer_runs import FAST, read_scalars, run_trainer

TINY = "models/tiny_llama"
VOCAB = 1024
CHUNK = 16  # tokens per slice: several slices per batch below, fewer than the hidden size (64)
LORA = {"target_modules": "all-linear", "r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY, pad_token="<unk>")


def tied_model(**_):
    config = AutoConfig.from_pretrained(TINY)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def lora_model(**_):
    model = load_causal_lm(TINY, "fp32", use_peft=True, lora_config=LORA)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave every A gradient zero
            param.data.normal_(std=0.02)
    return model


MODELS = {
    "plain": lambda: load_causal_lm(TINY, "fp32"),
    "tied": tied_model,
    "lora": lora_model,
    "checkpointing": lambda: load_causal_lm(TINY, "fp32", gradient_checkpointing=True),
}


def rows(lengths: list[list[int]], masked_prefix: int = 5) -> list[dict]:
    """Dataset rows of random tokens; each sample's first `masked_prefix` labels are -100 (a prompt)."""
    generator = torch.Generator().manual_seed(sum(map(sum, lengths)))
    out = []
    for index, seq_lens in enumerate(lengths):
        ids = torch.randint(3, VOCAB, (sum(seq_lens),), generator=generator).tolist()
        labels, start = list(ids), 0
        for n in seq_lens:
            labels[start:start + masked_prefix] = [IGNORE_INDEX] * masked_prefix
            start += n
        out.append({"input_ids": ids, "labels": labels, "index": index, "seq_lens": seq_lens})
    return out


def padded_batch(tokenizer):
    return PaddingCollator(tokenizer, pad_to_multiple_of=8)(rows([[37], [61]]))  # padding labelled -100 too


def packed_batch(tokenizer):
    batch = PackedCollator(tokenizer, "sdpa", pad_to_multiple_of=8)(rows([[20, 17, 9], [30, 25]]))
    assert "position_ids" in batch and batch["attention_mask"].dim() == 4
    return batch


def loss_and_grads(model, impl: str, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = copy.deepcopy(model).train()
    loss = causal_lm_loss_sum(model, model_inputs(batch, torch.device("cpu")), next_token_targets(batch["labels"]),
                              LossSettings(impl, CHUNK))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, name: str, tolerance: float = 1e-5):
    error = (actual.double() - expected.double()).norm().item()
    assert error <= tolerance * expected.double().norm().item(), f"{name}: relative error {error / expected.norm():.2e}"


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_chunked_loss_and_gradients_equal_full(kind, layout, tokenizer):
    model = MODELS[kind]()
    batch = (padded_batch if layout == "padded" else packed_batch)(tokenizer)
    full_loss, full_grads = loss_and_grads(model, "full", batch)
    chunked_loss, chunked_grads = loss_and_grads(model, "chunked", batch)
    assert_relative(chunked_loss, full_loss, "loss")
    assert full_grads.keys() == chunked_grads.keys() and full_grads
    for name, grad in full_grads.items():
        assert grad.norm() > 0, name  # every compared gradient is a real one
        assert_relative(chunked_grads[name], grad, name)
    if kind != "lora":  # LoRA trains adapters only
        assert any("lm_head" in n for n in full_grads) or kind == "tied"
        assert any("embed_tokens" in n for n in full_grads)


def test_chunked_loss_without_grad_equals_full(tokenizer):
    """The evaluators' held-out loss runs under no_grad: the chunked path then only sums the loss."""
    model, batch = load_causal_lm(TINY, "fp32").eval(), padded_batch(tokenizer)
    with torch.no_grad():
        sums = {}
        for impl in ("full", "chunked"):
            sums[impl] = causal_lm_loss_sum(model, model_inputs(batch, torch.device("cpu")), next_token_targets(batch["labels"]),
                                            LossSettings(impl, CHUNK))
    assert_relative(sums["chunked"], sums["full"], "loss")


class LargestVocabularyTensor(TorchDispatchMode):
    """Records, over every tensor an op returns, the most rows (numel / vocab) of one with a vocabulary-sized
    dimension: the logits of a slice have `slice` rows, full logits `tokens` rows."""

    def __init__(self):
        super().__init__()
        self.rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(tensor, torch.Tensor) and VOCAB in tensor.shape:
                self.rows = max(self.rows, tensor.numel() // VOCAB)
        return out


@pytest.mark.parametrize("impl", ["full", "chunked"])
def test_no_tokens_by_vocabulary_tensor_under_chunked(impl, tokenizer):
    batch = padded_batch(tokenizer)
    tokens = batch["input_ids"].numel()
    hidden = AutoConfig.from_pretrained(TINY).hidden_size
    assert tokens > hidden > CHUNK  # so the weight-shaped [vocab, hidden] tensors cannot hide a logits tensor
    model = load_causal_lm(TINY, "fp32").train()
    saved = []
    with LargestVocabularyTensor() as created, \
            torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        causal_lm_loss_sum(model, model_inputs(batch, torch.device("cpu")), next_token_targets(batch["labels"]),
                           LossSettings(impl, CHUNK)).backward()
    if impl == "full":  # the tracker does see the logits
        assert created.rows >= tokens and max(saved) >= tokens * VOCAB
    else:
        assert created.rows <= hidden  # slices of CHUNK rows and the [vocab, hidden] weight-sized gradients
        assert max(saved) < tokens * VOCAB


def test_scoring_under_chunked_equals_full(tokenizer):
    """Options sharing a context (one kept position read for several tokens) and slices that cut a row."""
    model = load_causal_lm(TINY, "fp32").eval()
    requests = (encode_options(tokenizer, "Question: which is right? Answer:", [" A", " B", " C", " the last one"])
                + encode_options(tokenizer, "另一个问题：", ["是的", "不是", "也许吧，谁知道"]))
    scores = {}
    for impl in ("full", "chunked"):
        scores[impl] = score_requests(model, requests, 1024, torch.device("cpu"), LossSettings(impl, 3))[0]
    assert scores["chunked"] == pytest.approx(scores["full"], rel=1e-6)  # fp32 logits, sliced matmuls


def test_auto_resolves_to_chunked_on_cpu_and_logs_it_once(caplog):
    model = load_causal_lm(TINY, "fp32")
    announce.cache_clear()
    with caplog.at_level(logging.INFO, logger="modules.loss_impl"):
        assert [resolve(model, LossSettings("auto"), torch.device("cpu")) for _ in range(3)] == ["chunked"] * 3
    assert [r.getMessage() for r in caplog.records] == [
        "loss_impl=auto: chunked (Liger-Kernel's Triton kernels need a CUDA GPU)"]
    assert resolve(model, LossSettings(), torch.device("cpu")) == "full"  # the default


def test_a_head_that_cannot_be_replaced():
    """LoRA on lm_head wraps it: auto falls back to full, an explicit chunked is refused in one line."""
    lora_head = {**LORA, "target_modules": ["q_proj", "lm_head"]}
    model = load_causal_lm(TINY, "fp32", use_peft=True, lora_config=lora_head)
    assert resolve(model, LossSettings("auto"), torch.device("cpu")) == "full"
    with pytest.raises(ConfigError, match="^loss_impl='chunked' cannot apply: its output head is a Linear"):
        resolve(model, LossSettings("chunked", CHUNK), torch.device("cpu"))


def test_settings_are_checked_when_built():
    with pytest.raises(ConfigError, match="^loss_impl='liger': Liger-Kernel's Triton kernels need a CUDA GPU"):
        LossSettings("liger")
    with pytest.raises(ConfigError, match="^loss_impl='fused': use one of auto, full, chunked, liger; "
                                          "loss_chunk_tokens=0: must be ≥ 1$"):
        LossSettings("fused", 0)


def run_both(tmp_path, overrides: list[str], **launch) -> dict[str, dict]:
    """Train with loss_impl full and chunked (small slices); their per-step losses, grad norms, final eval."""
    results = {}
    for impl in ("full", "chunked"):
        out = tmp_path / impl
        run_trainer(out, FAST + ["max_steps=4", "do_eval=true", f"loss_impl={impl}", "loss_chunk_tokens=64"]
                    + overrides, **launch)
        scalars = read_scalars(out)
        results[impl] = {"loss": [v for _, v in scalars["train/loss"]], "grad_norm": [v for _, v in scalars["train/grad_norm"]],
                         "eval": json.loads((out / "eval_results.json").read_text())["dev_loss/loss"]}
    return results


def assert_same_training(results: dict[str, dict]):
    full, chunked = results["full"], results["chunked"]
    assert len(full["loss"]) == len(chunked["loss"]) == 4
    for key in ("loss", "grad_norm"):  # later steps' losses carry the earlier steps' gradients, lm_head's included
        assert chunked[key] == pytest.approx(full[key], rel=1e-5), key
    assert chunked["eval"] == pytest.approx(full["eval"], rel=1e-5)


@pytest.mark.slow
def test_zero3_two_ranks_chunked_trains_as_full(tmp_path):
    """ZeRO-3 partitions lm_head: the head is gathered for its (one) call and its gradient reduced into the
    partition; the held-out loss (dev_loss evaluator, chunked under no_grad) agrees too."""
    assert_same_training(run_both(tmp_path, ["deepspeed@ds_cfg=zero3", "per_gpu_train_batch_size=2"],
                                  nproc=2))


@pytest.mark.slow
def test_zero2_chunked_trains_as_full(tmp_path):
    assert_same_training(run_both(tmp_path, ["deepspeed@ds_cfg=zero2", "per_gpu_train_batch_size=4"]))
