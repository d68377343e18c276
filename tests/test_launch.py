"""Launcher plumbing: --local_rank from the deepspeed launcher, the old script name, one-process runs."""
import os

from general_util.dist import consume_local_rank_arg, fill_single_process_env
from tests.forked_ranks import run_script


def test_local_rank_argument_is_consumed(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert consume_local_rank_arg(["trainer.py", "--local_rank=3", "-cp", "conf/demo"]) == ["trainer.py", "-cp", "conf/demo"]
    assert os.environ["LOCAL_RANK"] == "3"
    assert consume_local_rank_arg(["trainer.py", "--local_rank", "1", "x=1"]) == ["trainer.py", "x=1"]
    assert os.environ["LOCAL_RANK"] == "1"


def test_single_process_env_is_filled(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    fill_single_process_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    assert int(os.environ["MASTER_PORT"]) > 0


def test_old_script_name_and_local_rank_argument_still_work(tmp_path):
    # `python trainer_base_ds_v1.py ...` as a forked child (the script run as __main__, without the interpreter's
    # start-up: test_cli_errors and test_preflight start trainer.py fresh)
    result = run_script("trainer_base_ds_v1.py", ["--local_rank=0", "-cp", "conf/demo", "-cn", "sft",
                                                  f"output_dir={tmp_path}", "dry_run=true"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "optimizer steps: 152" in result.stdout
