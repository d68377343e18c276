"""The original PandaLLM config names (dandelionsllm/pandallm@4a47ecd, conf/llama/{zh,wiki}) under their names
here: the folder read as the original read it, and every same-named config resolving to the original's values
(tests/fixtures/panda_original/configs.json), except where the README's list of differences says otherwise."""
import functools
import glob
import json
import re
from fnmatch import fnmatch

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data.benchmarks.items import MultipleChoiceItem
from models.loading import load_tokenizer
from tests.trainer_runs import REPO, train_in_process
from training.engine import engine_of

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


FIXTURE = json.loads((REPO / "tests/fixtures/panda_original/configs.json").read_text(encoding="utf-8"))
ORIGINALS = FIXTURE["configs"]
README_TABLE = "| configs | keys | why |"  # README: "Where a same-named config differs from its original"


@functools.cache  # each original composed once per module: its value test and the README test read it, neither changes it
def compose_config(folder: str, name: str):
    with initialize_config_dir(config_dir=str(REPO / "conf/llama" / folder), version_base="1.3"):
        return compose(config_name=name, overrides=["model_name_or_path=models/tiny_llama"])


def pattern(path) -> str:
    """A data path as the pattern that matters: a folder read whole, or the file (or glob) name."""
    path = str(path).rstrip("/")
    for folder_read in ("/**/*.json", "/*.json"):
        if path.endswith(folder_read):
            return "<folder>"
    name = path.rsplit("/", 1)[-1]
    return name if "." in name else "<folder>"


def eval_file(node) -> str:
    """The file a benchmark node reads, named as the release names it."""
    reader, split = node.reader._target_.rsplit(".", 1)[-1], node.reader.split
    return {"C3Reader": f"c3-{node.reader.get('subset')}-{split}.json", "LogiQAReader": f"{split}_zh.txt",
            "ReClorReader": f"{split}.json"}.get(reader, reader)


def resolved(folder: str, name: str) -> dict:
    """This project's values of a config, in the fixture's terms."""
    cfg = compose_config(folder, name)
    if not cfg.do_train:
        (node,) = cfg.evaluators.values()
        if node._target_.endswith("LossEvaluator"):
            return {"do_train": False, "eval_file": pattern(cfg.dev_file), "batch_size": node.batch_size,
                    "max_seq_length": node.dataset.max_seq_length}
        prompt = instantiate(node.prompt)
        item = MultipleChoiceItem(id="x", passage="P", question="Q", options=("a", "b", "c", "d"), gold=0, source="",
                                  position="")
        rendered = prompt.render([item], [])[0]
        return {"do_train": False, "eval_file": eval_file(node), "batch_size": node.batch_size,
                "max_seq_length": node.max_seq_length, "max_new_tokens": node.generation.max_new_tokens,
                "num_beams": node.generation.num_beams, "answer_trigger": node.answer_trigger,
                "answer_position": node.answer_position, "num_shots": node.prompt.num_shots,
                "instruction": prompt.layout.instruction, "suffix": rendered.rsplit("\n\n", 1)[1],
                "suppress_eos": node.suppress_eos, "answer_source": node.answer_source,
                "prompt_truncation": node.prompt_truncation}
    zero = cfg.ds_cfg.zero_optimization
    model = cfg.model
    return {
        "do_train": True, "learning_rate": float(cfg.learning_rate),
        "per_gpu_train_batch_size": cfg.per_gpu_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "num_train_epochs": cfg.num_train_epochs,
        "max_steps": cfg.max_steps if cfg.max_steps > 0 else None,
        "warmup": ["steps", cfg.warmup_steps] if cfg.warmup_steps > 0 else ["proportion", float(cfg.warmup_proportion)],
        "weight_decay": float(cfg.weight_decay), "adam_epsilon": float(cfg.adam_epsilon),
        "adam_betas": [float(b) for b in cfg.adam_betas], "max_grad_norm": float(cfg.max_grad_norm),
        "lr_scheduler": cfg.lr_scheduler, "zero_stage": zero.stage if engine_of(cfg).name == "deepspeed" else None,
        "offload_optimizer": OmegaConf.select(cfg, "ds_cfg.zero_optimization.offload_optimizer.device"),
        "precision": cfg.precision, "save_steps": cfg.save_steps, "logging_steps": cfg.logging_steps,
        "max_seq_length": cfg.train_dataset.max_seq_length, "gradient_checkpointing": model.gradient_checkpointing,
        "use_peft": model.use_peft,
        "lora": {"r": model.lora_config.r, "alpha": model.lora_config.alpha, "dropout": model.lora_config.dropout}
        if model.use_peft else None,
        "load_in_4bit": model.load_in_4bit, "freeze": [model.freeze_strategy, model.train_norms],
        "train_file": pattern(next(iter(cfg.train_dataset.sources.values())).files),
    }


def documented_differences() -> dict[str, set[str]]:
    """README's table of the keys where a same-named config differs from its original: config -> keys."""
    documented: dict[str, set[str]] = {}
    for configs, keys, *_ in readme_table(README_TABLE):
        for config in re.findall(r"`([\w*]+)`", configs):
            documented.setdefault(config, set()).update(re.findall(r"`(\w+)`", keys))
    return documented


def test_fixture_names_its_source_and_every_original_config():
    assert FIXTURE["source"].startswith("dandelionsllm/pandallm@4a47ecd")
    assert len(ORIGINALS) == 44


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_same_named_config_resolves_to_the_originals_values(name):
    original = ORIGINALS[name]
    ours = resolved(original["folder"], name)
    allowed = set().union(*(keys for config, keys in documented_differences().items() if fnmatch(name, config)))
    original = {**original, "train_file": pattern(original["train_file"])} if "train_file" in original else original
    differing = {key for key, value in ours.items() if key in original and original[key] != value}
    assert differing <= allowed, {key: (original[key], ours[key]) for key in differing - allowed}
    if original.get("do_train") is False and "answer_source" in original:  # the original protocol throughout
        assert ours["prompt_truncation"] == "right"


def readme_table(header: str) -> list[list[str]]:
    """The cells of the README table whose header row starts with `header`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index(header):].split("\n\n", 1)[0]
    return [line.split("|")[1:-1] for line in table.splitlines()[2:]]


def test_readme_lists_every_original_name_and_what_each_does_not_reproduce():
    listed, unreproduced = set(), set()
    for names, _, missing in readme_table("| original configs (`conf/llama/zh` or `wiki`) |"):
        found = re.findall(r"`(\w+)`", names)
        listed.update(found)
        if missing.strip() not in ("—", "") and not missing.strip().startswith("— "):
            unreproduced.update(found)
    assert listed == set(ORIGINALS)
    composed = {name for name, original in ORIGINALS.items()
                if compose_config(original["folder"], name).not_reproduced}
    assert composed == unreproduced
    assert {name for name, original in ORIGINALS.items() if "yaml_error" in original} <= set(documented_differences())


def test_an_original_without_its_reader_runs_and_says_so_in_one_line(tmp_path):
    """`test` (wiki) scored NaturalQuestions with a reader this project lacks: it runs on instruction records and
    logs what is not reproduced, once."""
    train_in_process(tmp_path, ["model_name_or_path=models/tiny_llama", "precision=fp32",
                                "dev_file=data/samples/alpaca_zh_en_dev.jsonl"], ("conf/llama/wiki", "test"))
    log = (tmp_path / "logs" / "rank0.log").read_text(encoding="utf-8").splitlines()
    notes = [line for line in log if "not reproduced from the original config: " in line]
    assert len(notes) == 1 and "NaturalQuestions" in notes[0]
    metrics = json.loads((tmp_path / "eval" / "tiny_llama" / "dev_loss" / "metrics.json").read_text())
    assert metrics["loss"] > 0
