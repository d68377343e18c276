"""Vocabulary extension (token file; SentencePiece merge checked against Chinese-LLaMA-Alpaca's own procedure on
the real LLaMA-2 and chinese_sp.model files), mean-initialised new rows, the embeddings-only stage, and one pad
token shared by tokenizer, model config and collator."""
import difflib
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as sp_pb2_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from data.collators import PaddingCollator
from general_util.errors import ConfigError
from models import vocab
from models.loading import load_causal_lm, load_tokenizer
from tests.trainer_runs import FAST, train_in_process

BASE = "models/tiny_llama"
OLD_TEXT = "The capital of France is Paris. 计算 3 加 5。"
NEW_TOKENS = ["魑魅魍魉", "饕餮纹", "<think>"]
FIXTURES = Path("tests/fixtures/tokenizers")
LLAMA2 = FIXTURES / "llama2"  # LLaMA-2's tokenizer.model, 32,000 pieces
CHINESE_SP = FIXTURES / "chinese_llama_alpaca_sp" / "chinese_sp.model"  # Chinese-LLaMA-Alpaca's 20,000 pieces
TEXTS = {"zh": FIXTURES / "chinese_llama_alpaca_sp" / "README.excerpt.md",  # real documents, as published
         "en": FIXTURES / "chinese_llama_alpaca_sp" / "README_EN.excerpt.md"}


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(NEW_TOKENS) + "\n\n", encoding="utf-8")
    return path


def test_token_file_extends_vocabulary_without_changing_old_ids(token_file):
    base = load_tokenizer(BASE, pad_token="<unk>")
    extended = load_tokenizer(BASE, pad_token="<unk>", extra_tokens_file=str(token_file))
    assert len(extended) == len(base) + len(NEW_TOKENS)
    assert extended(OLD_TEXT)["input_ids"] == base(OLD_TEXT)["input_ids"]
    new_ids = [extended.convert_tokens_to_ids(t) for t in NEW_TOKENS]
    assert new_ids == list(range(len(base), len(base) + len(NEW_TOKENS)))
    assert set(new_ids) <= set(extended("前面魑魅魍魉后面饕餮纹<think>")["input_ids"])
    assert not set(new_ids) & set(base("前面魑魅魍魉后面饕餮纹<think>")["input_ids"])


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


def reference_merge() -> bytes:
    """Chinese-LLaMA-Alpaca's scripts/merge_tokenizer/merge_tokenizers.py (ymcui/Chinese-LLaMA-Alpaca@090475f),
    written out here on its own: each piece of the Chinese model that LLaMA's model lacks, appended to LLaMA's
    ModelProto with score 0."""
    llama_spm, chinese_spm = sp_pb2_model.ModelProto(), sp_pb2_model.ModelProto()
    llama_spm.ParseFromString((LLAMA2 / "tokenizer.model").read_bytes())
    chinese_spm.ParseFromString(CHINESE_SP.read_bytes())
    llama_spm_tokens_set = set(p.piece for p in llama_spm.pieces)
    for p in chinese_spm.pieces:
        if p.piece not in llama_spm_tokens_set:
            new_p = sp_pb2_model.ModelProto().SentencePiece()
            new_p.piece = p.piece
            new_p.score = 0
            llama_spm.pieces.append(new_p)
    return llama_spm.SerializeToString()


@pytest.fixture(scope="module")
def llama2_model(tmp_path_factory):
    """A tiny random LLaMA with LLaMA-2's vocabulary and tokenizer (tokenizer.json and tokenizer.model)."""
    model_dir = tmp_path_factory.mktemp("tiny_llama2")
    config = LlamaConfig(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(LLAMA2).save_pretrained(model_dir)
    (model_dir / "tokenizer.model").write_bytes((LLAMA2 / "tokenizer.model").read_bytes())
    return model_dir


@pytest.fixture(scope="module")
def merged(llama2_model):
    """The trainer's start-up merge: LLaMA-2 + chinese_sp.model, then a new [PAD] (as the recipes' SFT adds)."""
    return load_tokenizer(str(llama2_model), pad_token="[PAD]", merge_tokenizer=str(CHINESE_SP))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def differing_spans(first: list[int], second: list[int]) -> list[tuple[list[int], list[int]]]:
    matcher = difflib.SequenceMatcher(None, first, second, autojunk=False)
    return [(first[i1:i2], second[j1:j2]) for op, i1, i2, j1, j2 in matcher.get_opcodes() if op != "equal"]


def test_merge_is_chinese_llama_alpacas_and_keeps_every_old_id(merged, tmp_path):
    base, reference = AutoTokenizer.from_pretrained(LLAMA2), reference_merge()
    assert merged.sentencepiece_model == reference  # the same SentencePiece model, byte for byte
    pieces = [p.piece for p in sp_pb2_model.ModelProto.FromString(reference).pieces]
    assert len(pieces) == 49953 and merged.convert_ids_to_tokens(list(range(len(pieces)))) == pieces
    assert merged.convert_ids_to_tokens(list(range(len(base)))) == base.convert_ids_to_tokens(list(range(len(base))))
    assert merged.pad_token == "[PAD]" and merged.pad_token_id == len(pieces)  # the new pad comes after the merge
    # the reference's saved folder, as AutoTokenizer loads it, encodes every text as ours does
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "tokenizer.model").write_bytes(reference)
    reference_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "reference")
    for name, path in TEXTS.items():
        text = path.read_text(encoding="utf-8")
        assert ids(merged, text) == ids(reference_tokenizer, text), name


def test_merged_ids_differ_from_sentencepiece_only_where_equal_score_pieces_tie(merged):
    """sentencepiece breaks a tie between two new (score 0) pieces by position, a fast BPE by merge rank: the
    only place where the two may split a run differently. Everything else is the reference's encoding."""
    processor = spm.SentencePieceProcessor(model_proto=reference_merge())
    new = set(range(32000, 49953))
    for name, path in TEXTS.items():
        text = path.read_text(encoding="utf-8")
        ours, reference = ids(merged, text), processor.encode(text)
        spans = differing_spans(ours, reference)
        for mine, theirs in spans:
            assert processor.decode(mine) == processor.decode(theirs), (name, mine, theirs)
            assert set(mine) & new and set(theirs) & new, (name, processor.id_to_piece(mine), processor.id_to_piece(theirs))


def test_english_words_keep_their_ids_where_the_reference_keeps_them(merged):
    """Every word of the English document that the reference merge leaves as LLaMA-2 encoded it, ours leaves
    too (the add_tokens merge split `▁primary` into `▁ pri mary`)."""
    text = TEXTS["en"].read_text(encoding="utf-8")
    base = ids(AutoTokenizer.from_pretrained(LLAMA2), text)
    reference = spm.SentencePieceProcessor(model_proto=reference_merge()).encode(text)
    ours = ids(merged, text)

    def kept(matcher):  # indices of `reference` inside equal blocks
        return {j for op, _, _, j1, j2 in matcher.get_opcodes() if op == "equal" for j in range(j1, j2)}
    kept_by_reference = kept(difflib.SequenceMatcher(None, base, reference, autojunk=False))
    assert len(kept_by_reference) > 0.95 * len(reference)
    # every word keeps its ids; where ours differs, it is a run of digits split at a tie of new pieces (`▁3 0`
    # for the reference, `▁ 30` for ours: see the test above), which the reference too had changed in part
    changed = kept_by_reference - kept(difflib.SequenceMatcher(None, ours, reference, autojunk=False))
    pieces = AutoTokenizer.from_pretrained(LLAMA2).convert_ids_to_tokens([reference[j] for j in sorted(changed)])
    assert not any(char.isalpha() for piece in pieces for char in piece), pieces
    # the examples: `▁primary` stays whole; `▁Heating` becomes `▁H eat ing` in the reference merge too
    # (its new `eat`, score 0, outranks LLaMA's `ating`), so that split is Chinese-LLaMA-Alpaca's own
    sentence = "The primary use of LLaMA is research on large language models. Heating"
    reference_pieces = spm.SentencePieceProcessor(model_proto=reference_merge()).encode(sentence, out_type=str)
    assert merged.tokenize(sentence) == reference_pieces and "▁primary" in reference_pieces


def test_saved_merged_tokenizer_reloads_with_autotokenizer(merged, tmp_path):
    vocab.save_tokenizer(merged, tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == reference_merge()
    assert len(reloaded) == len(merged) and reloaded.pad_token == "[PAD]"
    for path in TEXTS.values():
        text = path.read_text(encoding="utf-8")
        assert reloaded(text)["input_ids"] == merged(text)["input_ids"]


@pytest.mark.parametrize("add_bos_token", [True, False])
def test_merge_keeps_the_bases_bos_and_eos(tmp_path, add_bos_token):
    """A folder as Meta's Llama-2-hf ships it (LlamaTokenizer, add_bos_token true) adds <s> after the merge too."""
    (tmp_path / "tokenizer.model").write_bytes((LLAMA2 / "tokenizer.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        f'{{"tokenizer_class": "LlamaTokenizer", "add_bos_token": {str(add_bos_token).lower()}, "add_eos_token": false}}')
    base = AutoTokenizer.from_pretrained(tmp_path)
    merged = vocab.merge_tokenizers(base, str(CHINESE_SP))
    assert merged("hi there")["input_ids"] == base("hi there")["input_ids"]
    assert (merged("hi there")["input_ids"][0] == merged.bos_token_id) == add_bos_token
    vocab.save_tokenizer(merged, tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved")("hi there")["input_ids"] == base("hi there")["input_ids"]


def test_offline_merge_command(tmp_path, capsys):
    assert vocab.main(["merge", "--base", str(LLAMA2), "--add", str(CHINESE_SP), "--out", str(tmp_path / "out")]) == 0
    assert "32000 tokens" in capsys.readouterr().out and (tmp_path / "out" / "tokenizer.model").read_bytes() == reference_merge()
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == 49953
    assert vocab.main(["merge", "--base", BASE, "--add", str(CHINESE_SP), "--out", str(tmp_path / "bpe")]) == 2
    assert capsys.readouterr().err.startswith("error: tokenizer.merge_tokenizer: the base tokenizer")
    assert vocab.main(["merge", "--base", str(tmp_path / "none"), "--add", str(CHINESE_SP), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"error: --base {tmp_path / 'none'}: no such tokenizer folder\n"


@pytest.mark.parametrize("base, add, reason", [("tiny", str(CHINESE_SP), "a byte-level BPE cannot"),
                                               ("llama2", BASE, "not a SentencePiece model")])
def test_merges_it_cannot_do_well_are_refused(llama2_model, base, add, reason):
    with pytest.raises(ConfigError, match=reason):
        load_tokenizer(BASE if base == "tiny" else str(llama2_model), merge_tokenizer=add)


def test_startup_merge_grows_the_model_with_mean_rows_and_saves_the_tokenizer(llama2_model, tmp_path):
    """The trainer merges at start-up, the new rows start at the mean of the old ones, and the checkpoint holds
    the merged tokenizer (tokenizer.json and tokenizer.model)."""
    model_dir = llama2_model
    tokenizer = load_tokenizer(str(model_dir), pad_token="<unk>", merge_tokenizer=str(CHINESE_SP))
    model = load_causal_lm(str(model_dir), "fp32", tokenizer=tokenizer)
    before = load_file(model_dir / "model.safetensors")
    for name, weight in (("model.embed_tokens.weight", model.get_input_embeddings().weight),
                         ("lm_head.weight", model.lm_head.weight)):
        assert weight.shape[0] == 49953 and torch.equal(weight[:32000], before[name])
        torch.testing.assert_close(weight[32000:], before[name].mean(0).expand(17953, -1), atol=1e-7, rtol=0)

    train_in_process(tmp_path / "run", FAST + ["max_steps=1", "per_gpu_train_batch_size=2", f"model_name_or_path={model_dir}",
                                               f"tokenizer.merge_tokenizer={CHINESE_SP}"])
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "tokenizer.model").read_bytes() == reference_merge()
    text = TEXTS["zh"].read_text(encoding="utf-8")
    assert AutoTokenizer.from_pretrained(checkpoint)(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert load_file(checkpoint / "model.safetensors")["model.embed_tokens.weight"].shape[0] == 49953
