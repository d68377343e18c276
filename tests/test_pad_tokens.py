"""Pad tokens that cost nothing (issue 27 requirement 3): `tokenizer.pad_token: auto` reuses a token the
vocabulary has, so no embedding/lm_head row is added; a named token that is missing is added (the original
recipes' `[PAD]`). On Llama-3 (no `<unk>`), multiple-choice log-likelihoods then equal lm-evaluation-harness's
HFLM within 1e-4 on real LogiQA 2.0 and C3 items (the bundled samples), with a tiny random LlamaForCausalLM of
Llama-3's 128,256-token vocabulary. Needs requirements-bench.txt (lm-eval, tiktoken; CI installs it)."""
import functools
import importlib.util
import os

import pytest
from omegaconf import OmegaConf

from models.loading import load_tokenizer
from tests import tokenizer_kinds
from tests.tokenizer_kinds import FOLDER_KINDS, REPO

EXPECTED_PAD = {"tiny_bpe": "<unk>", "llama2": "<unk>", "chinese_llama2": "<pad>",  # its tokenizer_config's own
                "llama3": "<|reserved_special_token_0|>", "qwen2": "<|endoftext|>"}


@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_auto_pad_reuses_a_token_the_vocabulary_has(kind):
    base = tokenizer_kinds.tokenizer(kind)
    tokenizer = load_tokenizer(str(tokenizer_kinds.folder(kind)))  # the default: pad_token=auto
    assert len(tokenizer) == len(base) and tokenizer.pad_token == EXPECTED_PAD[kind]
    assert tokenizer.pad_token_id < len(base) and tokenizer.pad_token_id not in (None, tokenizer.bos_token_id)


def test_a_named_pad_is_added_as_the_original_recipes_do():
    tokenizer = load_tokenizer(str(tokenizer_kinds.folder("llama2")), pad_token="[PAD]")
    assert len(tokenizer) == 32001 and tokenizer.pad_token_id == 32000  # the original vocabulary of 32001
    assert OmegaConf.load(REPO / "conf" / "recipe" / "panda_v1.yaml").tokenizer.pad_token == "[PAD]"
    assert OmegaConf.load(REPO / "conf" / "base.yaml").tokenizer.pad_token == "auto"


def test_llama3_multiple_choice_loglikelihoods_equal_lm_eval(tmp_path):
    if (importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("tiktoken") is None) \
            and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
        pytest.skip("lm-eval or tiktoken absent: pip install -r requirements-bench.txt (CI installs it)")
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from bench.eval_vs_lm_eval import agreement, lm_eval_tasks, run_lm_eval, run_ours
    from bench.eval_speed import logiqa_evaluators
    from data.benchmarks import C3Reader, MultipleChoicePrompt
    from post_processors.multiple_choice import MultipleChoiceEvaluator

    tokenizer = load_tokenizer(str(tokenizer_kinds.folder("llama3")))
    assert len(tokenizer) == 128256  # no row added for the pad token
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model_dir = tmp_path / "llama3_tiny"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    evaluators = logiqa_evaluators(limit=3, batch_size=3) + [
        MultipleChoiceEvaluator(f"c3_{subset}", functools.partial(C3Reader, subset=subset), MultipleChoicePrompt("zh"),
                                batch_size=3, max_seq_length=1024, data_dir=REPO / "data" / "samples" / "c3", limit=3)
        for subset in ("d", "m")]
    ours = run_ours(evaluators, model, tokenizer, tmp_path / "ours")
    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=4)
    theirs = run_lm_eval(lm, lm_eval_tasks(evaluators), log_samples=True)
    same = agreement(ours, theirs)
    assert sum(len(task["items"]) for task in ours.values()) == 12
    assert same["max_abs_loglikelihood_difference"] <= 1e-4, same
    assert same["identical_choices"] == 1.0 and same["metrics_identical"], same
