"""Mixtures by token share: each source gives its share of the epoch's tokens (over by less than one row),
repeating or subsampling itself, seeded; the trainer logs train/tokens/<source>, whose sum over a run killed on
1 rank and resumed on 2 is what the mixture planned; dry_run prints each source's tokens, share and epochs. With
the budget in optimizer steps (mixture_steps) the epoch is exactly that many global batches, whatever the world
size, and the shares hold of the largest total that fits."""
import numpy as np
import pytest
import torch

import data.datasets
from data.datasets import TokenizedDataset, token_share_blocks
from data.sampler import DistributedEpochSampler
from general_util.dist import DistContext
from general_util.errors import ConfigError
from models.loading import load_tokenizer
from tests.trainer_runs import FAST, read_scalars, run_trainer, train_in_process

SOURCES = {"zh": {"files": "data/samples/wudao_sample.json"}, "en": {"files": "data/samples/pretrain_sample.jsonl"}}
MIXTURE = {"zh": 0.6, "en": 0.4}
BUDGET = 3000


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def mixed(tokenizer, cache_dir, seed=0, mixture=MIXTURE, budget=BUDGET, sources=SOURCES, **steps):
    return TokenizedDataset(sources, tokenizer, max_seq_length=128, template="none", packing=True, seed=seed,
                            cache_dir=str(cache_dir), mixture=mixture, mixture_tokens=budget, **steps)


def batch(per_gpu, accumulation=1, sequence_parallel=1):
    return {"per_gpu": per_gpu, "accumulation": accumulation, "sequence_parallel": sequence_parallel}


def test_each_source_gives_its_share_of_the_tokens_repeating_or_subsampling(tmp_path, tokenizer):
    data = mixed(tokenizer, tmp_path)
    given = data.tokens_by_source(range(len(data)))
    own = [int(tokens.sum()) for tokens in data.row_tokens]
    for source, (name, share) in enumerate(MIXTURE.items()):
        target = round(share * BUDGET)
        assert target <= given[source] < target + data.row_tokens[source].max()  # over by less than one row
        plan = data.mixture[source]
        assert (plan["tokens"], plan["target_tokens"], plan["epochs"]) == (given[source], target, given[source] / own[source])
    assert data.mixture[1]["epochs"] > 1 > data.mixture[0]["epochs"] or data.mixture[0]["epochs"] > 1  # repeats one
    again, other = mixed(tokenizer, tmp_path), mixed(tokenizer, tmp_path, seed=1)
    assert [data.locations(i) for i in range(len(data))] == [again.locations(i) for i in range(len(again))]
    assert [data.locations(i) for i in range(len(data))] != [other.locations(i) for i in range(len(other))]
    assert data.mixture_lines()[0].startswith(f"mixture zh: {given[0]:,} tokens, share ")


@pytest.mark.parametrize("mixture, budget, sources, message", [
    ({"zh": 0.6, "en": 0.3}, BUDGET, SOURCES, "shares must be > 0 and sum to 1"),
    ({"zh": 1.0}, BUDGET, SOURCES, "name every source once"),
    (MIXTURE, None, SOURCES, "a mixture needs its total of tokens"),
    (MIXTURE, BUDGET, {**SOURCES, "en": {**SOURCES["en"], "weight": 2.0}}, "use one of them"),
    (MIXTURE, BUDGET, SOURCES, "give the budget one way, tokens or optimizer steps"),
    (MIXTURE, None, SOURCES, "mixture_steps needs {per_gpu, accumulation, sequence_parallel}"),
    (None, None, SOURCES, r"mixture_steps=5: give `mixture: \{source: share, ...\}` too"),
])
def test_a_wrong_mixture_is_a_one_line_config_error(tmp_path, tokenizer, mixture, budget, sources, message):
    steps = {"mixture_steps": 5, "global_batch": None if "per_gpu" in message else batch(4)} \
        if "step" in message else {}
    with pytest.raises(ConfigError, match=message):
        mixed(tokenizer, tmp_path, mixture=mixture, budget=budget, sources=sources, **steps)


@pytest.mark.parametrize("steps, per_gpu, accumulation", [(7, 4, 2), (40, 2, 3)])
def test_a_budget_in_steps_is_exactly_that_many_global_batches_of_the_shares(tmp_path, tokenizer, monkeypatch,
                                                                              steps, per_gpu, accumulation):
    mix = mixed(tokenizer, tmp_path, budget=None, mixture_steps=steps, global_batch=batch(per_gpu, accumulation))
    rows = steps * per_gpu * accumulation
    assert len(mix) == rows and sum(plan["rows"] for plan in mix.mixture) == rows
    given = mix.tokens_by_source(range(len(mix)))
    total = int(given.sum())
    for source, share in enumerate(MIXTURE.values()):  # of the total drawn, each its share (within a row)
        assert abs(given[source] - share * total) <= mix.row_tokens[source].max()
        assert mix.mixture[source]["tokens"] == given[source] >= mix.mixture[source]["target_tokens"]
    assert max(plan["epochs"] for plan in mix.mixture) > 1  # a source repeats: the budget is not its size
    fitted = mix.mixture[0]["budget_tokens"]  # the total the shares were drawn of
    assert [plan["target_tokens"] for plan in mix.mixture] == [round(share * fitted) for share in MIXTURE.values()]
    more, _ = token_share_blocks(mix.row_tokens, list(MIXTURE.values()), seed=0, total=fitted + 1)
    assert sum(count for _, _, count in more) > rows  # the largest total that fits
    assert mix.mixture_lines()[-1] == (f"mixture: {steps} optimizer steps of {per_gpu * accumulation} rows = "
                                       f"{rows:,} rows, {total:,} tokens")
    sampler = DistributedEpochSampler(len(mix), 0, 1, seed=0, micro_batch_size=per_gpu * accumulation)
    assert len(sampler.epoch_order(0)) == rows  # whole steps: nothing padded

    # a resume on 2 ranks with half the micro batch (the global batch is kept): the same epoch, row for row
    monkeypatch.setattr(data.datasets, "current", lambda: DistContext(0, 0, 2, torch.device("cpu")))
    resumed = mixed(tokenizer, tmp_path, budget=None, mixture_steps=steps,
                    global_batch=batch(per_gpu // 2, accumulation))
    assert [resumed.locations(i) for i in range(rows)] == [mix.locations(i) for i in range(rows)]
    halved = mixed(tokenizer, tmp_path, budget=None, mixture_steps=steps,  # 2 ranks of a sequence: 1 data rank
                   global_batch=batch(per_gpu // 2, accumulation, sequence_parallel=2))
    assert len(halved) == rows // 2


def test_rows_left_at_the_largest_total_go_to_the_sources_furthest_below_their_share():
    rows_of_ten = [np.full(4, 10), np.full(4, 10)]  # one more row each at the same total: 2 rows, 3 asked
    blocks, drawn = token_share_blocks(rows_of_ten, [0.5, 0.5], seed=0, rows=3)
    assert [plan["rows"] for plan in drawn] == [2, 1] and sum(count for _, _, count in blocks) == 3
    assert [plan["tokens"] for plan in drawn] == [20, 10] and drawn[0]["budget_tokens"] == 21  # round(10.5) = 10
    blocks, drawn = token_share_blocks([np.full(4, 10), np.full(2, 30)], [0.25, 0.75], seed=0, rows=9)
    assert [plan["rows"] for plan in drawn] == [4, 5] and [plan["tokens"] for plan in drawn] == [40, 150]
    assert drawn[0]["budget_tokens"] == 162  # 163 would need a fifth row of the first: round(40.75) = 41 > 40


MIXED_RUN = FAST + ["~train_dataset.sources.main", f"+train_dataset.sources.zh.files={SOURCES['zh']['files']}",
                    f"+train_dataset.sources.en.files={SOURCES['en']['files']}", "train_dataset.mixture={zh:0.6,en:0.4}",
                    "train_dataset.mixture_tokens=1500", "num_train_epochs=1", "save_steps=2", "num_workers=0"]


@pytest.mark.slow
def test_logged_tokens_per_source_over_a_run_resumed_on_another_world_size(tmp_path, tokenizer, capsys):
    out = tmp_path / "run"
    killed = run_trainer(out, MIXED_RUN + ["per_gpu_train_batch_size=4", f"data.cache_dir={tmp_path / 'cache'}"],
                         config=("conf/demo", "pretrain"), check=False, env={"LLAMA_TRAINER_FAULT": "kill@step=3"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_trainer(out, MIXED_RUN + ["per_gpu_train_batch_size=2", f"data.cache_dir={tmp_path / 'cache'}",
                                  "resume=auto"], config=("conf/demo", "pretrain"), nproc=2)
    scalars = read_scalars(out)
    logged = {name: dict(scalars[f"train/tokens/{name}"]) for name in MIXTURE}  # a step logged twice: the last
    data = mixed(tokenizer, tmp_path / "cache", seed=42, budget=1500)  # the run's seed (conf/base.yaml)
    order = DistributedEpochSampler(len(data), 0, 1, seed=42, micro_batch_size=4).epoch_order(0)
    steps = len(order) // 4
    assert sorted(logged["zh"]) == list(range(1, steps + 1)) and steps > 3
    expected = data.tokens_by_source(order)  # the epoch, padded to whole steps with its first rows
    assert [sum(logged[name].values()) for name in MIXTURE] == expected.tolist()

    train_in_process(tmp_path / "dry", MIXED_RUN + [f"data.cache_dir={tmp_path / 'cache'}", "dry_run=true"],
                     config=("conf/demo", "pretrain"))
    printed = capsys.readouterr().out
    assert all(line in printed for line in data.mixture_lines()) and "epochs of its" in printed


def test_dry_run_of_a_budget_in_steps_prints_that_many_optimizer_steps(tmp_path, capsys):
    steps_run = [option for option in MIXED_RUN if not option.startswith("train_dataset.mixture_tokens")]
    train_in_process(tmp_path / "dry", steps_run + ["train_dataset.mixture_steps=6", "per_gpu_train_batch_size=2",
                                                    "gradient_accumulation_steps=3", "dry_run=true",
                                                    f"data.cache_dir={tmp_path / 'cache'}"],
                     config=("conf/demo", "pretrain"))
    printed = capsys.readouterr().out
    assert "samples: 36; micro-batches per rank per epoch: 18; optimizer steps: 6" in printed
    assert "mixture: 6 optimizer steps of 6 rows = 36 rows, " in printed and "mixture zh: " in printed
