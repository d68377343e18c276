"""Every shipped task config (conf/demo, conf/llama) starts with its launch command, stays short, and
passes a dry run on the tiny model with bundled samples in place of its corpora.

A config whose data paths exist only on a cluster needs an entry in OVERRIDES naming bundled samples
(and max_steps, as a few samples give no complete step at a cluster's batch size)."""
import json
import re

import pytest

from tests.forked_ranks import run_script
from tests.trainer_runs import REPO, child_env

CONFIGS = sorted(path.relative_to(REPO) for folder in ("conf/demo", "conf/llama")
                 for path in (REPO / folder).rglob("*.yaml"))
WUDAO = ["train_file=data/samples/wudao_sample.json", "max_steps=10"]
ALPACA = ["train_file=data/samples/alpaca_zh_en_train.jsonl", "max_steps=10"]
PANDA_FOLDER = ["train_file=tests/fixtures/data/panda_mixed"]  # raw text + instructions + COIG, valid/test files
COMBINED_WUDAO = ["train_dataset.sources.wudao.files=data/samples/wudao_sample.json", "max_steps=2"]
OVERRIDES = {
    "llama_7b_zh_grpo_logiqa": ["train_file=data/samples/logiqa_v2"],
    "llama_7b_zh_pretrain_packed": WUDAO,
    "llama_13b_zh_pretrain_packed_zero3": WUDAO,
    "llama_7b_zh_belle_coig_sft_packed": ALPACA + ["train_dataset.sources.coig.files=data/samples/coig_sample.json"],
    "llama_7b_zh_instruct_v1_0_ds": PANDA_FOLDER + ["max_steps=2"],  # 9 samples give no step of 4 × 128
    "llama_13b_zh_instruct_v1_0_ds": PANDA_FOLDER + ["max_steps=2"],
    "llama_7b_zh_instruct_coig_sft_v1_0_ds": ["train_file=tests/fixtures/data/panda_mixed/coig/coig_data.json",
                                              "max_steps=2"],
    "llama_7b_flan_v1_4_ds": PANDA_FOLDER,
    "llama2_13b_zh_emb_pt_v1_0": PANDA_FOLDER + ["max_steps=2"],
    "llama2_13b_zh_v1_0_ds": PANDA_FOLDER + ["max_steps=2"],
    "llama2_13b_zh_v1_1_ds": PANDA_FOLDER + ["max_steps=2"],
    "llama2_13b_zh_v2_0_ds": PANDA_FOLDER + ["max_steps=2"],
    "llama2_13b_zh_v3_0_ds": PANDA_FOLDER + ["max_steps=2"],
    "llama2_13b_zh_sft_combine_v1_0_ds": PANDA_FOLDER + COMBINED_WUDAO,
    "llama_13b_zh_instruct_sft_combine_v1_0_ds": PANDA_FOLDER + COMBINED_WUDAO,
    "llama_13b_zh_instruct_sft_combine_v1_1_ds": PANDA_FOLDER + COMBINED_WUDAO,
    "llama_13b_zh_instruct_coig_sft_v1_0_ds": ["train_file=tests/fixtures/data/panda_mixed/coig/coig_data.json",
                                               "max_steps=2"],
    "llama_open_7b_300bt_zh_v1_0_ds": PANDA_FOLDER + ["max_steps=2"],
    "llama_7b_flan_v1_0": PANDA_FOLDER + ["max_steps=2"],
    "llama_7b_flan_v1_1": PANDA_FOLDER,
    "llama_7b_flan_v1_1_ds": PANDA_FOLDER,
    "llama_7b_flan_v1_2_ds": PANDA_FOLDER,
    "llama_7b_flan_v1_3_ds": PANDA_FOLDER,
    "llama_13b_merit_v1_pv91_v91_v1_0": PANDA_FOLDER,
    "llama_7b_merit_v1_pv91_v91_v2_0": PANDA_FOLDER,
    "llama_30b_qlora_test": PANDA_FOLDER + ["model.load_in_4bit=false", "max_steps=2"],  # 4-bit weights need CUDA
    "llama_65b_qlora_train_new": PANDA_FOLDER + COMBINED_WUDAO + ["model.load_in_4bit=false"],
    "test": ["dev_file=data/samples/alpaca_zh_en_dev.jsonl"],
    "llama_7b_zh_lora_sft": ALPACA,
    "llama_7b_zh_dpo": ["train_file=data/samples/dpo_zh_en_train.json"],
    "llama_7b_zh_lora_dpo": ["train_file=data/samples/dpo_zh_en_train.json"],
    "llama_7b_zh_qlora_sft": ALPACA + ["model.load_in_4bit=false"],  # 4-bit weights need CUDA
}
EXPECTED = {  # what the dry run must report for the configs of the data issue
    "pretrain": ["ZeRO-1, fp32", "samples: 9;"],
    "llama_7b_zh_pretrain_packed": ["ZeRO-1, bf16", "gradient_checkpointing: true", "max_seq_length: 2048"],
    "llama_13b_zh_pretrain_packed_zero3": ["ZeRO-3, bf16", "gradient_checkpointing: true", "stage: 3"],
    "llama_7b_zh_belle_coig_sft_packed": ["ZeRO-1, bf16", "weight: 3.0", "packing: true"],
    # the fixture folder: 2 raw texts, 4 instructions (+1 with an empty output, skipped), COIG 1 + 2 rounds
    "llama_7b_zh_instruct_v1_0_ds": ["samples: 9;", "parameters: 231,872"],
    "llama_7b_zh_instruct_coig_sft_v1_0_ds": ["samples: 3;"],
}
# The original PandaLLM recipes (../shared/SEED_RECIPES.md, "Training recipes"): (micro batch, accumulation, lr,
# weight decay, epochs, max_steps, warmup_proportion, warmup_steps) per config; everything else is shared (save_steps:
# tests/test_original_configs.py compares every original name with the original YAMLs).
ORIGINAL_RECIPES = {
    "llama_7b_zh_instruct_v1_0_ds": (4, 128, 1e-5, 0.0, 1, None, 0.01, 0),
    "llama_13b_zh_instruct_v1_0_ds": (2, 128, 1e-5, 0.0, 1, None, 0.01, 0),
    "llama_7b_zh_instruct_coig_sft_v1_0_ds": (4, 2, 3e-5, 0.0, 5, None, 0.01, 0),
    "llama_7b_flan_v1_4_ds": (4, 128, 5e-5, 0.01, 1, 4882, 0.0, 100),
}
SHARED_RECIPE = {"adam_epsilon": 1e-6, "adam_betas": [0.9, 0.99], "max_grad_norm": 5.0, "precision": "bf16",
                 "lr_scheduler": "WarmupDecayLR", "logging_steps": 1,
                 "model.gradient_checkpointing": True, "train_dataset.max_seq_length": 2048,
                 "tokenizer.pad_token": "[PAD]", "train_dataset.template": "panda", "train_dataset.packing": False,
                 "train_dataset.coig_rounds": "per_round", "ds_cfg.zero_optimization.stage": 1,
                 "ds_cfg.zero_optimization.contiguous_gradients": True, "ds_cfg.zero_optimization.overlap_comm": True,
                 "ds_cfg.zero_optimization.reduce_scatter": True, "ds_cfg.zero_optimization.reduce_bucket_size": 5e8,
                 "ds_cfg.zero_optimization.allgather_bucket_size": 5e8, "ds_cfg.gradient_clipping": 5.0,
                 "ds_cfg.optimizer.type": "AdamW", "ds_cfg.optimizer.params.eps": 1e-6,
                 "ds_cfg.optimizer.params.betas": [0.9, 0.99], "ds_cfg.bf16.enabled": True}


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_config_header_and_length(config):
    lines = (REPO / config).read_text(encoding="utf-8").splitlines()
    command = f"trainer.py -cp {config.parent} -cn {config.stem}"
    assert re.match(rf"# (python|deepspeed [^#]*?|torchrun [^#]*?) {re.escape(command)}( |$)", lines[0]), lines[0]
    if config.stem in EXPECTED and config.parts[1] == "llama":  # the multi-GPU runs of the data issue
        assert lines[0] == f"# deepspeed --include localhost:0,1,2,3,4,5,6,7 {command}"
    assert len(lines) <= 60


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict:
    """Every config's dry run, all in one child process forked from the warm fork server (tests/dry_runs.py;
    the command line itself is covered by test_preflight)."""
    root = tmp_path_factory.mktemp("dry_runs")
    runs = [[str(config.parent), config.stem,
             ["model_name_or_path=models/tiny_llama", f"output_dir={root / str(config).replace('/', '_')}",
              f"data.cache_dir={root / 'cache'}", "data.num_proc=1", *OVERRIDES.get(config.stem, [])]]
            for config in CONFIGS]  # the samples are tokenized in the run's process (worker pools: test_data_cache)
    (root / "runs.json").write_text(json.dumps(runs), encoding="utf-8")
    result = run_script("-m tests.dry_runs", [str(root / "runs.json")], env=child_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_config_dry_runs(dry_runs, config):
    run = dry_runs[f"{config.parent}/{config.stem}"]
    assert run["error"] is None, run["error"]
    # the dry run got to the end; the tiny LLaMA's size, one embedding + lm_head row more with a new [PAD]
    assert re.search(r"^parameters: (231,744|231,872)$", run["stdout"], re.M), run["stdout"][-500:]
    assert "optimizer steps:" in run["stdout"] or "evaluation only:" in run["stdout"]
    for expected in EXPECTED.get(config.stem, []):
        assert expected in run["stdout"], expected


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(ORIGINAL_RECIPES))
def test_original_config_names_run_the_original_recipes(dry_runs, config):
    from omegaconf import OmegaConf
    folder = "conf/llama/wiki" if "flan" in config else "conf/llama/zh"
    run = dry_runs[f"{folder}/{config}"]
    assert run["error"] is None, run["error"]
    resolved = OmegaConf.create(run["stdout"].split("\nparameters: ")[0])
    batch, accumulation, lr, decay, epochs, max_steps, warmup_proportion, warmup = ORIGINAL_RECIPES[config]
    expected = {**SHARED_RECIPE, "per_gpu_train_batch_size": batch, "gradient_accumulation_steps": accumulation,
                "ds_cfg.train_micro_batch_size_per_gpu": batch, "ds_cfg.gradient_accumulation_steps": accumulation,
                "learning_rate": lr, "ds_cfg.optimizer.params.lr": lr, "weight_decay": decay,
                "ds_cfg.optimizer.params.weight_decay": decay, "num_train_epochs": epochs,
                "warmup_proportion": warmup_proportion, "warmup_steps": warmup}
    if max_steps:
        expected["max_steps"] = max_steps
    actual = {key: OmegaConf.select(resolved, key) for key in expected}
    assert actual == expected
    if "coig" not in config:  # read as the original did: <dir>/**/*.json, paths with valid/test left out
        assert OmegaConf.select(resolved, "train_dataset.sources.main.exclude") == ["valid", "test"]
        assert OmegaConf.select(resolved, "train_dataset.sources.main.files").endswith("panda_mixed/**/*.json")


def test_the_pad_token_grows_the_vocabulary_by_one():
    """LLaMA's 32000 tokens + `[PAD]` = 32001, with [PAD] the new last id (the tiny model: 1024 + 1)."""
    from models.loading import load_tokenizer
    base = load_tokenizer("models/tiny_llama")
    grown = load_tokenizer("models/tiny_llama", pad_token="[PAD]")
    assert len(grown) == len(base) + 1 and grown.pad_token_id == len(base)
