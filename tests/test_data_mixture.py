"""Mixtures by token share: each source gives its share of the epoch's tokens (over by less than one row),
repeating or subsampling itself, seeded; the trainer logs train/tokens/<source>, whose sum over a run killed on
1 rank and resumed on 2 is what the mixture planned; dry_run prints each source's tokens, share and epochs."""
import pytest

from data.datasets import TokenizedDataset
from data.sampler import DistributedEpochSampler
from general_util.errors import ConfigError
from models.loading import load_tokenizer
from tests.trainer_runs import FAST, read_scalars, run_trainer, train_in_process

SOURCES = {"zh": {"files": "data/samples/wudao_sample.json"}, "en": {"files": "data/samples/pretrain_sample.jsonl"}}
MIXTURE = {"zh": 0.6, "en": 0.4}
BUDGET = 3000


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def mixed(tokenizer, cache_dir, seed=0, mixture=MIXTURE, budget=BUDGET, sources=SOURCES):
    return TokenizedDataset(sources, tokenizer, max_seq_length=128, template="none", packing=True, seed=seed,
                            cache_dir=str(cache_dir), mixture=mixture, mixture_tokens=budget)


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
])
def test_a_wrong_mixture_is_a_one_line_config_error(tmp_path, tokenizer, mixture, budget, sources, message):
    with pytest.raises(ConfigError, match=message):
        mixed(tokenizer, tmp_path, mixture=mixture, budget=budget, sources=sources)


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
