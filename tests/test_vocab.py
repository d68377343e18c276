"""Vocabulary extension (token file, merged tokenizer), mean-initialised new rows, the embeddings-only stage,
and one pad token shared by tokenizer, model config and collator."""
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from data.collators import PaddingCollator
from models.loading import load_causal_lm, load_tokenizer
from tests.trainer_runs import FAST, train_in_process

BASE = "models/tiny_llama"
OLD_TEXT = "The capital of France is Paris. 计算 3 加 5。"
NEW_TOKENS = ["魑魅魍魉", "饕餮纹", "<think>"]


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(NEW_TOKENS) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture
def other_tokenizer(tmp_path):
    """A second (word-level) tokenizer: two new words and one piece the base vocabulary already has."""
    known = next(t for t in load_tokenizer(BASE).get_vocab() if t.isascii() and t.isalpha() and len(t) >= 3)
    vocab = {"<unk>": 0, "螭吻": 1, "狻猊": 2, known: 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(tmp_path / "other")
    return tmp_path / "other", known


def test_token_file_extends_vocabulary_without_changing_old_ids(token_file):
    base = load_tokenizer(BASE, pad_token="<unk>")
    extended = load_tokenizer(BASE, pad_token="<unk>", extra_tokens_file=str(token_file))
    assert len(extended) == len(base) + len(NEW_TOKENS)
    assert extended(OLD_TEXT)["input_ids"] == base(OLD_TEXT)["input_ids"]
    new_ids = [extended.convert_tokens_to_ids(t) for t in NEW_TOKENS]
    assert new_ids == list(range(len(base), len(base) + len(NEW_TOKENS)))
    assert set(new_ids) <= set(extended("前面魑魅魍魉后面饕餮纹<think>")["input_ids"])
    assert not set(new_ids) & set(base("前面魑魅魍魉后面饕餮纹<think>")["input_ids"])


def test_merged_tokenizer_adds_only_missing_pieces(other_tokenizer, token_file):
    path, known = other_tokenizer
    base = load_tokenizer(BASE, pad_token="<unk>")
    extended = load_tokenizer(BASE, pad_token="<unk>", extra_tokens_file=str(token_file), merge_tokenizer=str(path))
    added = sorted(extended.get_vocab().keys() - base.get_vocab().keys())
    assert added == sorted(NEW_TOKENS + ["螭吻", "狻猊"]) and known in base.get_vocab()
    assert extended(OLD_TEXT)["input_ids"] == base(OLD_TEXT)["input_ids"]
    assert extended.convert_tokens_to_ids("狻猊") in extended("一只狻猊")["input_ids"]


def test_new_embedding_rows_are_the_mean_of_the_old_ones(token_file):
    tokenizer = load_tokenizer(BASE, pad_token="[PAD]", extra_tokens_file=str(token_file))
    base = AutoModelForCausalLM.from_pretrained(BASE)
    model = load_causal_lm(BASE, "fp32", tokenizer=tokenizer)
    old = base.get_input_embeddings().weight.shape[0]
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == len(tokenizer) == old + 4
    for new, before in ((model.get_input_embeddings().weight, base.get_input_embeddings().weight),
                        (model.lm_head.weight, base.lm_head.weight)):
        assert torch.equal(new[:old], before)
        torch.testing.assert_close(new[old:], before.mean(0).expand(4, -1), atol=1e-7, rtol=0)


def test_embeddings_only_freezes_everything_else():
    model = load_causal_lm(BASE, "fp32", freeze_strategy="embeddings_only")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model.embed_tokens.weight", "lm_head.weight"}
    model = load_causal_lm(BASE, "fp32", freeze_strategy="embeddings_only", train_norms=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable - {"model.embed_tokens.weight", "lm_head.weight"} == \
        {n for n, _ in model.named_parameters() if "norm" in n}


def test_embedding_stage_under_zero3_trains_only_embeddings_and_saves_the_tokenizer(tmp_path, token_file):
    train_in_process(tmp_path, FAST + ["max_steps=3", "per_gpu_train_batch_size=4", "deepspeed@ds_cfg=zero3",
                                       f"tokenizer.extra_tokens_file={token_file}", "model.freeze_strategy=embeddings_only",
                                       "weight_decay=0.0"])  # decay would shrink the untouched new rows
    checkpoint = tmp_path / "checkpoint-3"
    trained, base = load_file(checkpoint / "model.safetensors"), load_file(f"{BASE}/model.safetensors")
    assert len(AutoTokenizer.from_pretrained(checkpoint)) == len(load_tokenizer(BASE)) + len(NEW_TOKENS)
    for name, before in base.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert not torch.equal(trained[name][:before.shape[0]], before), name
        else:
            assert torch.equal(trained[name], before), name
    # the new tokens never occur in the data: their input rows got no gradient and are still the mean
    embeddings, old = trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"]
    torch.testing.assert_close(embeddings[len(old):], old.mean(0).expand(len(NEW_TOKENS), -1), atol=1e-7, rtol=0)


@pytest.mark.parametrize("pad_token", ["<unk>", "[PAD]"])
def test_pad_token_agrees_everywhere_and_labels_do_not_depend_on_it(pad_token):
    tokenizer = load_tokenizer(BASE, pad_token=pad_token)
    model = load_causal_lm(BASE, "fp32", tokenizer=tokenizer)
    collator = PaddingCollator(tokenizer, pad_to_multiple_of=8)
    assert tokenizer.pad_token == pad_token
    assert model.config.pad_token_id == model.generation_config.pad_token_id == collator.pad_token_id == \
        tokenizer.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    ids = tokenizer(OLD_TEXT)["input_ids"]
    batch = collator([{"input_ids": ids, "labels": ids, "index": 0}, {"input_ids": ids[:3], "labels": ids[:3], "index": 1}])
    assert (batch["input_ids"][1, 3:] == tokenizer.pad_token_id).all()
    expected = torch.full_like(batch["labels"], -100)
    expected[0, :len(ids)], expected[1, :3] = torch.tensor(ids), torch.tensor(ids[:3])
    assert torch.equal(batch["labels"], expected)  # padding is -100 whatever token pads, real <unk>s stay
