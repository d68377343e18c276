"""The original PandaLLM config names (dandelionsllm/pandallm@4a47ecd, conf/llama/{zh,wiki}) under their names
here: the folder read as the original read it, and every same-named config resolving to the original's values
(tests/fixtures/panda_original/configs.json), except where the README's list of differences says otherwise."""
import glob
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from models.loading import load_tokenizer
from tests.trainer_runs import REPO

PANDA_FOLDER = REPO / "tests/fixtures/data/panda_mixed"


def original_folder_count(folder, wudao_sample_list: list[str] | None = None) -> int:
    """How many samples the original `data.collators.zh_instruct.TextDatasetUnify` (@4a47ecd) reads from a
    folder given as `.` (started inside it: its path checks see only the paths below it, as ours do):
    `./**/*.json` with paths containing `valid`/`test` left out, COIG's `coig_data.json` one sample per round,
    `WuDaoCorpus` files only when the list names them (as the glob spells them), JSON lines with an empty
    output dropped."""
    files = sorted(f for f in glob.glob("./**/*.json", root_dir=folder, recursive=True)
                   if "valid" not in f and "test" not in f)
    include = set(wudao_sample_list or ())
    count = 0
    for name in files:
        file = str(folder / name)
        if "coig_data.json" in name:
            for item in json.load(open(file, encoding="utf-8")):
                count += len(item) if isinstance(item, list) else 1
        elif "WuDaoCorpus" in name:
            if name in include:
                count += len(json.load(open(file, encoding="utf-8")))
        else:
            for line in open(file, encoding="utf-8"):
                item = json.loads(line)
                if not ("text" in item and item["text"].strip()) and not item["output"].strip():
                    continue
                count += 1
    return count


def panda_dataset(tmp_path, overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "conf/llama/zh"), version_base="1.3"):
        cfg = compose(config_name="llama_7b_zh_instruct_v1_0_ds",
                      overrides=["model_name_or_path=models/tiny_llama", f"train_file={PANDA_FOLDER}", *overrides])
    tokenizer = load_tokenizer("models/tiny_llama", pad_token="[PAD]")
    return instantiate(cfg.train_dataset, tokenizer=tokenizer, cache_dir=str(tmp_path / "cache"), num_proc=1,
                       _convert_="object")


def test_folder_sample_count_is_the_originals_wudao_files_only_when_listed(tmp_path):
    wudao = sorted(glob.glob("./WuDaoCorpus*/*.json", root_dir=PANDA_FOLDER))
    assert len(wudao) == 2  # the fixture holds WuDao parts in the release's layout (3 documents)
    data = panda_dataset(tmp_path)
    assert data.report["examples"] == original_folder_count(PANDA_FOLDER) == 9  # WuDao left out
    listing = tmp_path / "wudao_sample_list.json"
    listing.write_text(json.dumps([str(PANDA_FOLDER / wudao[0])]), encoding="utf-8")
    data = panda_dataset(tmp_path, [f"train_dataset.sources.main.wudao_sample_list={listing}"])
    assert data.report["examples"] == original_folder_count(PANDA_FOLDER, wudao[:1]) == 11  # the listed part's 2
