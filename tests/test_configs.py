"""Every shipped task config (conf/demo, conf/llama) starts with its launch command, stays short, and
passes a dry run on the tiny model with bundled samples in place of its corpora.

A config whose data paths exist only on a cluster needs an entry in OVERRIDES naming bundled samples
(and max_steps, as a few samples give no complete step at a cluster's batch size)."""
import json
import re
import subprocess
import sys

import pytest

from tests.trainer_runs import REPO, child_env

CONFIGS = sorted(path.relative_to(REPO) for folder in ("conf/demo", "conf/llama")
                 for path in (REPO / folder).rglob("*.yaml"))
WUDAO = ["train_file=data/samples/wudao_sample.json", "max_steps=10"]
ALPACA = ["train_file=data/samples/alpaca_zh_en_train.jsonl", "max_steps=10"]
OVERRIDES = {
    "llama_7b_zh_instruct_v1_0_ds": WUDAO,
    "llama_13b_zh_instruct_v1_0_ds": WUDAO,
    "llama_7b_zh_instruct_coig_sft_v1_0_ds": ALPACA + ["train_dataset.sources.coig.files=data/samples/coig_sample.json"],
    "llama2_13b_zh_emb_pt_v1_0": WUDAO + ["tokenizer.merge_tokenizer=null"],
    "llama_7b_zh_lora_sft": ALPACA,
    "llama_7b_zh_qlora_sft": ALPACA + ["model.load_in_4bit=false"],  # 4-bit weights need CUDA
}
EXPECTED = {  # what the dry run must report for the configs of the data issue
    "pretrain": ["ZeRO-1, fp32", "samples: 9;"],
    "llama_7b_zh_instruct_v1_0_ds": ["ZeRO-1, bf16", "gradient_checkpointing: true", "max_seq_length: 2048"],
    "llama_13b_zh_instruct_v1_0_ds": ["ZeRO-3, bf16", "gradient_checkpointing: true", "stage: 3"],
    "llama_7b_zh_instruct_coig_sft_v1_0_ds": ["ZeRO-1, bf16", "weight: 3.0", "packing: true"],
}


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
    """Every config's dry run, all in one child process (tests/dry_runs.py; the command line itself is
    covered by test_preflight)."""
    root = tmp_path_factory.mktemp("dry_runs")
    runs = [[str(config.parent), config.stem,
             ["model_name_or_path=models/tiny_llama", f"output_dir={root / str(config).replace('/', '_')}",
              f"data.cache_dir={root / 'cache'}", *OVERRIDES.get(config.stem, [])]] for config in CONFIGS]
    (root / "runs.json").write_text(json.dumps(runs), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "tests.dry_runs", str(root / "runs.json")], cwd=REPO,
                            env=child_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_config_dry_runs(dry_runs, config):
    run = dry_runs[f"{config.parent}/{config.stem}"]
    assert run["error"] is None, run["error"]
    assert "parameters: 231,744" in run["stdout"]  # the dry run got to the end
    assert "optimizer steps:" in run["stdout"] or "evaluation only:" in run["stdout"]
    for expected in EXPECTED.get(config.stem, []):
        assert expected in run["stdout"], expected
