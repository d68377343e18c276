"""Packing: rows filled without overflow, each sample isolated (own positions, no attention across the
boundary, first label -100), and per-sample losses of a packed batch equal to the unpacked ones."""
import pytest
import torch
import torch.nn.functional as F

from data.collators import PackedCollator, PaddingCollator
from data.datasets import TokenizedDataset
from data.labels import IGNORE_INDEX
from data.packing import pack_lengths
from models.loading import load_causal_lm, load_tokenizer
from modules.loss import count_label_tokens

FILES = ["data/samples/alpaca_zh_en_dev.jsonl", "data/samples/sharegpt_sample.json", "data/samples/coig_sample.json"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


@pytest.fixture(scope="module")
def datasets(tokenizer, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return tuple(TokenizedDataset({"mix": {"files": FILES}}, tokenizer, max_seq_length=512, template="zh",
                                  packing=packing, cache_dir=str(cache)) for packing in (False, True))


def test_best_fit_decreasing_fills_rows_without_overflow():
    lengths = [6, 4, 5, 5, 3, 7, 1]
    rows = pack_lengths(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4 and rows == pack_lengths(lengths, 10)
    with pytest.raises(ValueError, match="does not fit"):
        pack_lengths([11], 10)


def test_packed_rows_hold_every_sample_once(datasets):
    unpacked, packed = datasets
    assert len(packed) <= len(unpacked) / 3
    locations = [loc for i in range(len(packed)) for loc in packed.locations(i)]
    assert sorted(locations) == sorted(unpacked.locations(i)[0] for i in range(len(unpacked)))
    for i in range(len(packed)):
        row = packed[i]
        assert len(row["input_ids"]) == sum(row["seq_lens"]) <= 512
        starts = [sum(row["seq_lens"][:k]) for k in range(len(row["seq_lens"]))]
        assert all(row["labels"][s] == IGNORE_INDEX for s in starts)  # never predicted by the previous sample


def test_collator_isolates_samples(tokenizer):
    rows = [{"input_ids": [1, 5, 6, 1, 7], "labels": [-100, 5, 6, -100, 7], "seq_lens": [3, 2], "index": 0},
            {"input_ids": [1, 8, 9, 2], "labels": [-100, 8, 9, 2], "seq_lens": [4], "index": 1}]
    batch = PackedCollator(tokenizer, "sdpa", pad_to_multiple_of=8)(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch["labels"][0].tolist() == [-100, 5, 6, -100, 7] + [-100] * 3
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.bool
    assert mask[0, 0, 4].tolist() == [False, False, False, True, True, False, False, False]  # 2nd sample sees itself only
    assert mask[0, 0, 2].tolist() == [True, True, True] + [False] * 5
    assert int(batch["num_tokens"]) == 9 and int(batch["num_samples"]) == 3
    eager = PackedCollator(tokenizer, attn_implementation="eager")(rows)["attention_mask"]
    assert eager.dtype == torch.float32 and ((eager == 0) == mask[:, :, :5, :5]).all()
    flat = PackedCollator(tokenizer, attn_implementation="flash_attention_2")(rows)
    assert "attention_mask" not in flat and flat["input_ids"].shape == (1, 9)
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    with pytest.raises(ValueError, match="PackedCollator"):
        PaddingCollator(tokenizer)(rows)


def sample_losses(logits, labels, seq_lens_per_row) -> list[float]:
    """Mean next-token loss of every sample, located by its row and offset."""
    losses = []
    for row, seq_lens in enumerate(seq_lens_per_row):
        start = 0
        for n in seq_lens:
            losses.append(F.cross_entropy(logits[row, start:start + n - 1], labels[row, start + 1:start + n],
                                          ignore_index=IGNORE_INDEX).item())
            start += n
    return losses


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", "flash_attention_2"])
def test_packed_losses_equal_unpacked(datasets, tokenizer, attn_implementation):
    """flash_attention_2 here checks the collator's padding-free layout (one row, position ids): the model
    runs sdpa, to which transformers passes the same isolation derived from the position ids."""
    unpacked, packed = datasets
    model = load_causal_lm("models/tiny_llama", "fp32", attn_implementation=attn_implementation.replace(
        "flash_attention_2", "sdpa")).eval()
    expected = {}
    padding = PaddingCollator(tokenizer, pad_to_multiple_of=8)
    for start in range(0, len(unpacked), 8):
        rows = [unpacked[i] for i in range(start, min(start + 8, len(unpacked)))]
        batch = padding(rows)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        losses = sample_losses(logits, batch["labels"], [[len(r["input_ids"])] for r in rows])
        expected.update(zip((unpacked.locations(i)[0] for i in range(start, start + len(rows))), losses))
    collator = PackedCollator(tokenizer, pad_to_multiple_of=8, attn_implementation=attn_implementation)
    got, label_tokens = {}, 0
    for start in range(0, len(packed), 4):
        indices = range(start, min(start + 4, len(packed)))
        rows = [packed[i] for i in indices]
        batch = collator(rows)
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        with torch.no_grad():
            logits = model(**inputs).logits
        flat = batch["input_ids"].shape[0] == 1  # the flash layout: every sample of the batch in one row
        layout = [[n for r in rows for n in r["seq_lens"]]] if flat else [r["seq_lens"] for r in rows]
        locations = [loc for i in indices for loc in packed.locations(i)]
        got.update(zip(locations, sample_losses(logits, batch["labels"], layout)))
        label_tokens += int(count_label_tokens(batch["labels"]))
    assert got.keys() == expected.keys()
    worst = max(abs(got[k] - expected[k]) for k in expected)
    assert worst < 1e-5, worst
    assert label_tokens == sum(int(count_label_tokens(padding([unpacked[i]])["labels"])) for i in range(len(unpacked)))
