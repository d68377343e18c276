"""Our preference losses, their gradients and the logged reward metrics equal TRL's own functions (trl==1.16.0,
requirements-preference.txt) on the tiny model and the same batch (pairs of LLaMA-Factory's dpo_en_demo.json),
within 1e-5 relative (a reward, a difference of two log-probability sums, within 1e-5 of β·|log p|):
    DPO, IPO, robust DPO   trl.DPOTrainer._compute_loss (its fused LM head, precomputed reference log-probs)
    conservative DPO       trl.experimental.cpo.CPOTrainer.cpo_loss, sigmoid with label_smoothing, on the log-ratios
                           (TRL 1.16's DPOTrainer has no label-smoothed sigmoid; CPO's is the same formula)
    SimPO                  CPOTrainer.cpo_loss (loss_type simpo) on CPOTrainer.get_batch_logps(average_log_prob=True)
    ORPO                   ORPOTrainer.odds_ratio_loss (the odds-ratio term; our NLL term counts response tokens only)
    KTO                    trl.KTOTrainer._compute_loss (loss_type kto, its fused LM head, precomputed reference
                           log-probs of the rows and of the mismatched KL rows; TRL 1.16 has no separate kto_loss), on
                           the 8 records of LLaMA-Factory's kto_en_demo.json (tests/fixtures/preference)
Both sides run under loss_impl full and chunked."""
import importlib.util
import json
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tests.trainer_runs import REPO

if importlib.util.find_spec("trl") is None and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
    pytest.skip("trl absent: pip install -r requirements-preference.txt (CI installs it)", allow_module_level=True)

FIXTURES = REPO / "tests" / "fixtures" / "preference"
TINY = REPO / "models" / "tiny_llama"
BETA = 0.1
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


def pair_batch(tokenizer, max_seq_length: int = 96) -> dict:
    from data.collators import PreferenceCollator
    from data.preference import PairTokenizer, to_pair
    from data.records import Record
    from data.templates import get_template
    records = json.loads((FIXTURES / "dpo_en_demo.json").read_text())
    pairs = [to_pair(Record(r, "dpo_en_demo.json", i), get_template("en"))[0] for i, r in enumerate(records)]
    rows = []
    for index, result in enumerate(PairTokenizer(tokenizer, max_seq_length)(pairs)):
        ids = [int(t) for s in result.segments for t in s.input_ids]
        labels = [int(t) if m else -100 for s in result.segments for t, m in zip(s.input_ids, s.trained)]
        rows.append({"input_ids": ids, "labels": labels, "seq_lens": [len(s.input_ids) for s in result.segments],
                     "index": index})
    return PreferenceCollator(tokenizer)(rows)


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoModelForCausalLM

    from models.loading import load_tokenizer
    tokenizer = load_tokenizer(str(TINY))
    batch = pair_batch(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    with torch.no_grad():  # a reference that differs from the policy, so the log-ratios are not zero
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model, reference, batch


def ours(objective, model, reference, batch, impl):
    """(loss, gradient, metrics) of our objective, the loss normalised as the loop does for one micro-batch."""
    from modules.loss_impl import LossSettings
    from modules.preference import reference_logps
    objective.reference = lambda inputs, targets: reference_logps(reference, inputs, targets, LossSettings("full"))
    model.zero_grad()
    output = objective.loss(model, batch, LossSettings(impl, 16), torch.device("cpu"))
    loss = (output.loss_sums / objective.normalisers(batch).float()).sum()
    loss.backward()
    metrics = {name: (total / count).item() for name, (total, count) in output.metrics.items()}
    return loss.detach(), gradient(model), metrics


def gradient(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def completion_mask(batch):
    return (batch["labels"] != -100).long()


def trl_dpo(loss_types, weights, model, reference, batch):
    """TRL's DPOTrainer._compute_loss on a stand-in for the trainer (its attributes, an identity accelerator)."""
    import copy

    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head
    from modules.loss_impl import LossSettings
    from modules.preference import pair_targets, reference_logps
    policy = copy.deepcopy(model)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    ref = reference_logps(reference, {"input_ids": batch["input_ids"]}, pair_targets(batch), LossSettings("full")).float()
    pairs = batch["input_ids"].shape[0] // 2
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x,
                                  unwrap_model=lambda m: m)
    trainer = SimpleNamespace(model=policy, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
                              precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
                              loss_weights=weights, beta=BETA, label_smoothing=0.2 if "robust" in loss_types else 0.0,
                              use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
                              _total_train_tokens=0, _tp_size=1, args=SimpleNamespace())
    policy.train()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": (batch["input_ids"] >= 0).long(),
              "completion_mask": completion_mask(batch), "ref_chosen_logps": ref[:pairs],
              "ref_rejected_logps": ref[pairs:]}
    # TRL's labels are the completion tokens of input_ids: ours mark exactly those positions
    assert torch.equal(inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100), batch["labels"])
    loss = DPOTrainer._compute_loss(trainer, policy, inputs, return_outputs=False)
    loss.backward()
    return loss.detach(), gradient(policy), {name: trainer._metrics["train"][name][0] for name in METRICS}


def assert_matches(mine, theirs, metrics=METRICS):
    loss, grad, logged = mine
    trl_loss, trl_grad, trl_logged = theirs
    torch.testing.assert_close(loss, trl_loss.to(loss.dtype), rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-5, atol=1e-5 * trl_grad.abs().max().item())
    assert grad.abs().max() > 0
    # a reward β·(log p - ref log p) is a difference of two sums of ~|log p| ≈ 500 in fp32 (on both sides): relative
    # to what it is computed from, i.e. within 1e-5 of β·|log p|
    scale = BETA * max(abs(logged["logps/chosen"]), abs(logged["logps/rejected"]), 1.0)
    for name in metrics:
        tolerance = 1e-5 * (scale if name.startswith("rewards/") else abs(trl_logged[name]))
        assert logged[name] == pytest.approx(trl_logged[name], rel=1e-5, abs=tolerance), name


@pytest.mark.parametrize("impl", ["full", "chunked"])
@pytest.mark.parametrize("loss_type, rpo_alpha", [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.0), ("sigmoid", 0.5)])
def test_dpo_ipo_robust_and_rpo_equal_trl(setup, impl, loss_type, rpo_alpha):
    from modules.preference import DPO
    model, reference, batch = setup
    label_smoothing = 0.2 if loss_type == "robust" else 0.0
    mine = ours(DPO(BETA, loss_type, label_smoothing, rpo_alpha), model, reference, batch, impl)
    types, weights = ([loss_type, "sft"], [1.0, rpo_alpha]) if rpo_alpha else ([loss_type], [1.0])
    assert_matches(mine, trl_dpo(types, weights, model, reference, batch))


def trl_pair_loss(trainer_class, method, attributes, model, reference, batch, use_reference, average):
    """A TRL pair-loss method (CPO's cpo_loss, ORPO's odds_ratio_loss) on log-probabilities from the trainer's own
    get_batch_logps; returns (mean loss to minimise, gradient, TRL's reward metrics as its trainers log them)."""
    import copy
    policy = copy.deepcopy(model)
    policy.zero_grad()
    pairs = batch["input_ids"].shape[0] // 2
    logps = trainer_class.get_batch_logps(policy(input_ids=batch["input_ids"]).logits, batch["labels"].clone(),
                                          average_log_prob=average)
    if use_reference:
        with torch.no_grad():
            ref = trainer_class.get_batch_logps(reference(input_ids=batch["input_ids"]).logits, batch["labels"].clone())
        logps = logps - ref
    accelerator = SimpleNamespace(device=torch.device("cpu"))
    stand_in = SimpleNamespace(accelerator=accelerator, beta=BETA, **attributes)
    losses, chosen_rewards, rejected_rewards = getattr(trainer_class, method)(stand_in, logps[:pairs], logps[pairs:])[:3]
    loss = losses.mean() if method == "cpo_loss" else -losses.mean()
    loss.backward()
    metrics = {"rewards/chosen": chosen_rewards.mean().item(), "rewards/rejected": rejected_rewards.mean().item(),
               "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
               "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
               "logps/chosen": logps[:pairs].mean().item(), "logps/rejected": logps[pairs:].mean().item()}
    return loss.detach(), gradient(policy), metrics


@pytest.mark.parametrize("impl", ["full", "chunked"])
def test_conservative_dpo_simpo_and_orpo_equal_trl(setup, impl):
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    from modules.preference import DPO, ORPO, SimPO
    model, reference, batch = setup
    cpo = {"alpha": 0.0, "loss_type": "sigmoid", "label_smoothing": 0.2, "simpo_gamma": 0.5}
    conservative = trl_pair_loss(CPOTrainer, "cpo_loss", cpo, model, reference, batch, True, False)
    # CPO's rewards are β·(its inputs) = β·log-ratios: DPO's; its logps metrics are the log-ratios, not logged here
    assert_matches(ours(DPO(BETA, "sigmoid", 0.2), model, reference, batch, impl), conservative, METRICS[:4])
    simpo = trl_pair_loss(CPOTrainer, "cpo_loss", {**cpo, "loss_type": "simpo", "label_smoothing": 0.0}, model,
                          reference, batch, False, True)
    assert_matches(ours(SimPO(BETA, 0.5), model, reference, batch, impl), simpo)
    orpo = trl_pair_loss(ORPOTrainer, "odds_ratio_loss", {}, model, reference, batch, False, True)
    objective = ORPO(BETA)
    objective.sft_weight = lambda: 0.0  # the odds-ratio term alone (see the module docstring)
    assert_matches(ours(objective, model, reference, batch, impl), orpo)


KTO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")


def kto_batch(tokenizer, max_seq_length: int = 96) -> dict:
    """The 8 records of LLaMA-Factory's kto_en_demo.json (4 desirable, 4 undesirable) as one micro-batch."""
    from data.collators import KtoCollator
    from data.preference import KtoTokenizer, to_kto
    from data.records import Record
    from data.templates import get_template
    records = json.loads((FIXTURES / "kto_en_demo.json").read_text())
    items = [to_kto(Record(r, "kto_en_demo.json", i), get_template("en"))[0] for i, r in enumerate(records)]
    rows = []
    for index, result in enumerate(KtoTokenizer(tokenizer, max_seq_length)(items)):
        (segment,) = result.segments
        ids = [int(t) for t in segment.input_ids]
        rows.append({"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, segment.trained)],
                     "seq_lens": [len(ids)], "index": index, "label": result.label})
    return KtoCollator(tokenizer)(rows)


def trl_kto(model, reference, batch, desirable_weight, undesirable_weight):
    """TRL's KTOTrainer._compute_loss (loss_type kto, its fused LM head, precomputed reference log-probs of the rows
    and of the mismatched KL rows) on a stand-in for the trainer (its attributes, an identity accelerator)."""
    import copy

    from trl.trainer.kto_trainer import KTOTrainer
    from trl.trainer.utils import add_fused_lm_head
    from modules.loss import next_token_targets
    from modules.loss_impl import LossSettings
    from modules.preference import pair_targets, reference_logps
    policy = copy.deepcopy(model)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits"))
    full = LossSettings("full")
    ref = reference_logps(reference, {"input_ids": batch["input_ids"]}, pair_targets(batch), full).float()
    ref_kl = reference_logps(reference, {"input_ids": batch["kl_input_ids"]}, next_token_targets(batch["kl_labels"]),
                             full).float()
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x,
                                  unwrap_model=lambda m: m)
    trainer = SimpleNamespace(model=policy, accelerator=accelerator, aux_loss_enabled=False, calculate_KL=True,
                              precompute_ref_logps=True, loss_type="kto", beta=BETA, desirable_weight=desirable_weight,
                              undesirable_weight=undesirable_weight, _metrics=defaultdict(lambda: defaultdict(list)),
                              _total_train_tokens=0, _tp_size=1, args=SimpleNamespace())
    trainer._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(trainer, m, b)
    policy.train()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["input_ids"]),
              "completion_mask": completion_mask(batch), "KL_input_ids": batch["kl_input_ids"],
              "KL_attention_mask": torch.ones_like(batch["kl_input_ids"]),
              "KL_completion_mask": (batch["kl_labels"] != -100).long(), "label": batch["kto_label"].clone(),
              "ref_logps": ref, "ref_KL_logps": ref_kl}
    assert torch.equal(inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100), batch["labels"])
    loss = KTOTrainer._compute_loss(trainer, policy, inputs, return_outputs=False)
    loss.backward()
    return loss.detach(), gradient(policy), {name: trainer._metrics["train"][name][0] for name in KTO_METRICS}


@pytest.mark.parametrize("impl", ["full", "chunked"])
@pytest.mark.parametrize("desirable_weight, undesirable_weight", [(1.0, 1.0), (1.33, 0.75)])
def test_kto_equals_trl(setup, impl, desirable_weight, undesirable_weight):
    from models.loading import load_tokenizer
    from modules.preference import KTO
    model, reference, _ = setup
    batch = kto_batch(load_tokenizer(str(TINY)))
    assert batch["kto_label"].any() and not batch["kto_label"].all()
    mine = ours(KTO(BETA, desirable_weight, undesirable_weight), model, reference, batch, impl)
    theirs = trl_kto(model, reference, batch, desirable_weight, undesirable_weight)
    assert theirs[2]["kl"] > 0  # the KL estimate is not clamped away: its term is exercised
    assert_matches(mine, theirs, KTO_METRICS[:5])
    assert mine[2]["kl"] == pytest.approx(theirs[2]["kl"], rel=1e-5, abs=1e-5 * BETA * abs(theirs[2]["logps/chosen"]))
