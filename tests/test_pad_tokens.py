"""Pad tokens that cost nothing (issue 27 requirement 3): `tokenizer.pad_token: auto` reuses a token the
vocabulary has, so no embedding/lm_head row is added; a named token that is missing is added (the original
recipes' `[PAD]`). The Llama-3 scores against lm-eval's HFLM: bench/tests/test_pad_tokens_lm_eval.py (it reuses
the lm-eval bench's runners)."""

import pytest
from omegaconf import OmegaConf

from models.loading import load_tokenizer
from tests import tokenizer_kinds
from tests.tokenizer_kinds import FOLDER_KINDS, REPO

EXPECTED_PAD = {"tiny_bpe": "<unk>", "llama2": "<unk>", "chinese_llama2": "<pad>",  # its tokenizer_config's own
                "llama3": "<|reserved_special_token_0|>", "qwen2": "<|endoftext|>"}


@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_auto_pad_reuses_a_token_the_vocabulary_has(kind):
    size = tokenizer_kinds.describe(kind)["size"]  # the session's tokenizer of `kind` (read only: no copy of it)
    tokenizer = load_tokenizer(str(tokenizer_kinds.folder(kind)))  # the default: pad_token=auto
    assert len(tokenizer) == size and tokenizer.pad_token == EXPECTED_PAD[kind]
    assert tokenizer.pad_token_id < size and tokenizer.pad_token_id not in (None, tokenizer.bos_token_id)


def test_a_named_pad_is_added_as_the_original_recipes_do():
    tokenizer = load_tokenizer(str(tokenizer_kinds.folder("llama2")), pad_token="[PAD]")
    assert len(tokenizer) == 32001 and tokenizer.pad_token_id == 32000  # the original vocabulary of 32001
    assert OmegaConf.load(REPO / "conf" / "recipe" / "panda_v1.yaml").tokenizer.pad_token == "[PAD]"
    assert OmegaConf.load(REPO / "conf" / "base.yaml").tokenizer.pad_token == "auto"
