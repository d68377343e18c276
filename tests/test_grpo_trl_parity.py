"""GRPO with TRL as the oracle (trl==1.16.0, requirements-preference.txt): for fixed prompts, completions and rewards, our
advantages, loss (each loss_type) and gradients (modules/grpo.py) equal those of TRL's own GRPOTrainer —
its `_generate_and_score_completions` (advantages, reference log-probs, token counts) and `_compute_loss`
(clipped ratios, k3 KL, aggregation), run on a real trainer whose `_generate` returns the fixed completions.

The ratios are made ≠ 1 (so both clips act) by giving both sides the same sampling log-probs; the reference is a
perturbed copy of the model (so the KL is > 0). Prompts have equal token lengths: TRL forwards left-padded rows
without position ids (positions counted from the pad), we count them from each row's first token, as generate."""
import copy
import importlib.util
import os

import pytest
import torch

from modules.grpo import (ClipSettings, completion_logps, group_advantages, normaliser, policy_loss, reward_table,
                          rollout_batch, weighted_rewards)
from post_processors.rewards import Reward
from tests.trainer_runs import REPO

if importlib.util.find_spec("trl") is None and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
    pytest.skip("trl is not installed (pip install -r requirements-preference.txt)", allow_module_level=True)

TINY = REPO / "models" / "tiny_llama"
G, MAX_LEN, TEMPERATURE = 4, 6, 0.7
PROMPT_IDS = [[1, 30, 31, 32], [1, 40, 41, 42]]
COMPLETION_IDS = [[50, 51, 2], [52, 53, 54, 55, 56, 57], [58, 2], [50, 60, 61, 62],
                  [70, 2], [71, 72, 73, 2], [74, 75, 76, 77, 78, 79], [80]]


class Fixed(Reward):
    """A reward read from a table by completion index (the rewards are data here, not under test)."""

    def __init__(self, name, weight, values):
        super().__init__(name, weight)
        self.values = values

    def __call__(self, prompts, completions, samples):
        return [self.values[s["index"]] for s in samples]


OUR_REWARDS = {"answer": Fixed("answer", 1.0, [1, 0, 0, 1, 1, 1, 0, None]),
               "shaped": Fixed("shaped", 0.5, [0.2, 0.9, 0.4, None, 0.3, 0.1, 0.0, None])}


def trl_trainer(loss_type, kl_correction, model, tokenizer):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def as_trl(reward):  # TRL's reward signature: prompts=, completions=, **columns
        return lambda prompts, completions, index, **_: reward(prompts, completions, [{"index": i} for i in index])
    functions = []
    for name, reward in OUR_REWARDS.items():
        functions.append(as_trl(reward))
        functions[-1].__name__ = name
    config = GRPOConfig(output_dir="unused", use_cpu=True, per_device_train_batch_size=len(COMPLETION_IDS),
                        num_generations=G, max_completion_length=MAX_LEN, temperature=TEMPERATURE, beta=0.1,
                        epsilon=0.2, epsilon_high=0.28, loss_type=loss_type, scale_rewards="group",
                        reward_weights=[r.weight for r in OUR_REWARDS.values()], report_to=[], save_strategy="no",
                        cast_lm_head_to_fp32=False, bf16=False,
                        use_bias_correction_kl=kl_correction)
    dataset = Dataset.from_list([{"prompt": "p0", "index": 0}, {"prompt": "p1", "index": 4}])
    trainer = GRPOTrainer(model=model, reward_funcs=functions, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    texts = tokenizer.batch_decode(COMPLETION_IDS)
    trainer._generate = lambda prompts: ([PROMPT_IDS[i // G] for i in range(len(COMPLETION_IDS))], COMPLETION_IDS,
                                         None, texts, None, {}, None, None)
    return trainer


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float64)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return tokenizer, policy, reference


@pytest.mark.parametrize("loss_type,kl_correction", [("grpo", True), ("dapo", True), ("dr_grpo", True),
                                                    ("dapo", False)])
def test_advantages_loss_and_gradients_equal_trl(models, loss_type, kl_correction):
    tokenizer, policy, reference = models
    theirs, ours = copy.deepcopy(policy), copy.deepcopy(policy)
    trainer = trl_trainer(loss_type, kl_correction, theirs, tokenizer)
    trainer.ref_model.load_state_dict(reference.state_dict())
    inputs = trainer._generate_and_score_completions([{"prompt": "p0", "index": i} for i in range(4)]
                                                     + [{"prompt": "p1", "index": i} for i in range(4, 8)])

    # ours: the same rows, rewards, advantages
    samples = [{"index": i} for i in range(len(COMPLETION_IDS))]
    per_function, weights = reward_table(OUR_REWARDS, [""] * 8, [""] * 8, samples)
    advantages = group_advantages(weighted_rewards(per_function, weights), G)
    torch.testing.assert_close(advantages, inputs["advantages"].double(), rtol=1e-5, atol=1e-7)

    batch = rollout_batch([PROMPT_IDS[i // G] for i in range(8)], COMPLETION_IDS, tokenizer.pad_token_id)
    assert torch.equal(batch["completion_mask"], inputs["completion_mask"].cpu())
    device = torch.device("cpu")
    with torch.no_grad():
        ref_logps, _ = completion_logps(reference, batch, device, TEMPERATURE)
        current, _ = completion_logps(ours, batch, device, TEMPERATURE)
    real = batch["completion_mask"].bool()  # TRL leaves the padding's log-probs 0
    torch.testing.assert_close(ref_logps[real], inputs["ref_per_token_logps"][real], rtol=1e-5, atol=1e-8)
    # sampling log-probs away from the current ones: ratios on both sides of the clip range
    old = current + 0.3 * torch.randn(current.shape, generator=torch.Generator().manual_seed(1), dtype=current.dtype)
    inputs["old_per_token_logps"] = old

    theirs.train()
    trainer.current_gradient_accumulation_steps = 1  # what transformers' training loop sets before each step
    theirs.zero_grad()
    their_loss = trainer._compute_loss(theirs, inputs)
    their_loss.backward()

    settings = ClipSettings(loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=0.1,
                            max_completion_length=MAX_LEN, use_bias_correction_kl=kl_correction)
    logps, _ = completion_logps(ours, batch, device, TEMPERATURE)
    out = policy_loss(logps, old, advantages, batch["completion_mask"], settings, ref_logps)
    our_loss = out.loss_sum / normaliser(batch["completion_mask"], settings)
    our_loss.backward()
    assert out.low_clipped.any() and out.high_clipped.any() and (out.per_token_kl > 0).any()

    torch.testing.assert_close(our_loss.detach(), their_loss.detach().double(), rtol=1e-5, atol=0)
    for (name, mine), (_, theirs_) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert (mine.grad - theirs_.grad).norm() <= 1e-5 * theirs_.grad.norm(), name
