"""LLaMA-Factory's dataset registry as sources: `dataset_info.json` entries named by a source's `dataset` key.

    train_dataset:
      dataset_info: /data/LLaMA-Factory/data/dataset_info.json   # file_name is relative to its folder
      sources:
        alpaca: {dataset: alpaca_zh_demo}
        tools: {dataset: glaive_toolcall_zh_demo, weight: 2.0}

An entry's records become the samples LLaMA-Factory's converters build from it (src/llamafactory/data/
converter.py, parser.py; hiyouga/LLaMA-Factory@ff6d4d12): `formatting: alpaca` (columns prompt, query, response,
history, system, tools: the user turn is "prompt\\nquery", history pairs come first) and `formatting: sharegpt`
(columns messages, system, tools; tags role_tag, content_tag, user/assistant/observation/function/system_tag:
a leading system turn is the system prompt; user or observation turns alternate with assistant or function-call
turns, in an even number, else the example is bad, which LLaMA-Factory skips). An alpaca record without a
response is a document of its first user turn, as LLaMA-Factory's pretraining reads `columns: {prompt: text}`.
`split`, `folder` and `subset` pick the files; text files are read a document per line (as `datasets` reads
them). `hf_hub_url` entries are read from the local hub cache (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub): nothing is downloaded. `ranking: true` entries are preference pairs (columns chosen
and rejected; a sharegpt conversation then ends with a user turn, as LLaMA-Factory requires) for a preference
dataset (data.datasets.PreferenceDataset). Refused, each in one line: KTO entries (conf/data/kto.yaml reads such
files itself), images/videos/audios columns, `num_samples`,
ModelScope/OpenMind-only, script and cloud entries, and formattings other than alpaca and sharegpt.
"""
import json
import os
from pathlib import Path

from data.records import DataError, Record
from general_util.errors import ConfigError

FORMATTINGS = ("alpaca", "sharegpt")
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None,
           "messages": "conversations", "system": None, "tools": None, "chosen": "chosen", "rejected": "rejected"}
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
REFUSED_COLUMNS = {"images": "image", "videos": "video", "audios": "audio", "kto_tag": "KTO"}
# our ShareGPT layout's role names (data/formats.py) for LLaMA-Factory's tags
ROLES = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation", "function_tag": "function_call"}


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def hub_snapshot(repo_id: str, where: str) -> Path:
    """The folder of the newest downloaded snapshot (refs/main) of dataset repository `repo_id` in the hub cache."""
    repo = hub_cache() / f"datasets--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    snapshot = repo / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if snapshot is None or not snapshot.is_dir():
        raise ConfigError(f"{where}: hf_hub_url {repo_id} is not in the local hub cache ({repo}); download it first: "
                          f"huggingface-cli download --repo-type dataset {repo_id}")
    return snapshot


def load_entry(info_path: str | Path, name: str) -> dict:
    """A source for entry `name` of the dataset_info.json at `info_path`: {files, split, layout, text_documents}."""
    info_path = Path(info_path)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"dataset_info={info_path}: cannot read it ({e})") from None
    where = f"{info_path}: {name}"
    if name not in info:
        raise ConfigError(f"{where}: no such dataset in it ({len(info)} entries)")
    entry = info[name]
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise ConfigError(f"{where}: formatting {formatting!r} is not supported; use one of {', '.join(FORMATTINGS)}")
    refused = sorted(REFUSED_COLUMNS[c] for c in (entry.get("columns") or {}) if c in REFUSED_COLUMNS)
    if refused:
        raise ConfigError(f"{where}: {', '.join(dict.fromkeys(refused))} columns are not supported (text only)")
    if entry.get("num_samples") is not None:
        raise ConfigError(f"{where}: num_samples is not supported (LLaMA-Factory draws them unseeded); use the "
                          "source's weight")
    if "hf_hub_url" in entry:
        root = hub_snapshot(entry["hf_hub_url"], where)
    elif "file_name" in entry and not {"script_url", "cloud_file_name"} & set(entry):
        root = info_path.parent / entry["file_name"]
    else:
        kinds = sorted(set(entry) & {"ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"})
        raise ConfigError(f"{where}: {', '.join(kinds) or 'an entry without file_name'} is not supported; give "
                          "file_name or hf_hub_url")
    for part in (entry.get("folder"), entry.get("subset")):
        root = root / part if part and (root / part).is_dir() else root
    layout = {"name": name, "formatting": formatting, "columns": {**COLUMNS, **(entry.get("columns") or {})},
              "tags": {**TAGS, **(entry.get("tags") or {})}, "ranking": bool(entry.get("ranking"))}
    return {"files": str(root), "split": entry.get("split", "train"), "layout": layout, "text_documents": "line"}


def convert(record: Record, layout: dict) -> Record:
    """The record as the sample LLaMA-Factory's converter makes of it, in our ShareGPT layout (or a document); a
    `ranking` entry's record as LLaMA-Factory's sharegpt ranking layout (`conversations` ending with a user turn,
    `chosen` and `rejected` assistant messages: data/preference.py)."""
    data, columns = record.data, layout["columns"]
    if not isinstance(data, dict):
        raise DataError(record.source, record.line, f"expected an object for dataset {layout['name']}",
                        kind="wrong type")

    def column(key):
        return data.get(columns[key]) if columns.get(key) else None

    if layout["formatting"] == "alpaca":
        turns = []
        history = column("history")
        if isinstance(history, list):
            for old_prompt, old_response in history:
                turns += [{"from": "human", "value": old_prompt}, {"from": "gpt", "value": old_response}]
        query = "\n".join(part for part in (column("prompt"), column("query")) if part)
        turns.append({"from": "human", "value": query})
        system = column("system") or None
        if layout["ranking"]:
            return _pair(record, turns, system, None, [{"from": "gpt", "value": column(side)}
                                                        for side in ("chosen", "rejected")])
        response = column("response")
        if not isinstance(response, str):  # unsupervised: LLaMA-Factory's pretraining reads the first user turn
            return Record({"text": turns[0]["value"]}, record.source, record.line)
        turns.append({"from": "gpt", "value": response})
        system = column("system") or None
    else:
        turns, system = _sharegpt_turns(record, layout, column("messages"))
        system = system if system is not None else column("system") or None
        if layout["ranking"]:
            return _pair(record, turns, system, column("tools") or None,
                         [_answer(record, layout, column(side), side) for side in ("chosen", "rejected")])
    converted = {"conversations": turns, "system": system, "tools": column("tools") or None}
    return Record(converted, record.source, record.line)


def _sharegpt_turns(record: Record, layout: dict, messages) -> tuple[list[dict], str | None]:
    tags = layout["tags"]

    def bad(reason: str) -> DataError:
        return DataError(record.source, record.line, f"{reason} (dataset {layout['name']}; LLaMA-Factory skips "
                         "this example)", kind="invalid conversation")

    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise bad(f"column {layout['columns']['messages']!r} is not a list of messages")
    system = None
    role, content = tags["role_tag"], tags["content_tag"]
    if tags["system_tag"] and messages and messages[0].get(role) == tags["system_tag"]:
        system, messages = messages[0].get(content), messages[1:]
    accepted = ((tags["user_tag"], tags["observation_tag"]), (tags["assistant_tag"], tags["function_tag"]))
    by_tag = {tags[key]: name for key, name in ROLES.items()}
    turns = []
    for number, message in enumerate(messages):
        if message.get(role) not in accepted[number % 2]:
            raise bad(f"turn {number + 1} has role {message.get(role)!r}, expected one of {list(accepted[number % 2])}")
        turns.append({"from": by_tag[message[role]], "value": message.get(content)})
    if len(turns) % 2 != layout.get("ranking", False):
        raise bad(f"{len(turns)} turns: a conversation ends with an assistant turn" if not layout.get("ranking") else
                  f"{len(turns)} turns: a ranking conversation ends with a user turn (chosen and rejected answer it)")
    return turns, system


def _answer(record: Record, layout: dict, message, side: str) -> dict:
    """A ranking entry's chosen or rejected message in our ShareGPT layout (an assistant or function-call turn)."""
    tags = layout["tags"]
    if not isinstance(message, dict) or message.get(tags["role_tag"]) not in (tags["assistant_tag"], tags["function_tag"]):
        raise DataError(record.source, record.line, f"column {layout['columns'][side]!r} is not an assistant message "
                        f"(dataset {layout['name']}; LLaMA-Factory skips this example)", kind="invalid conversation")
    by_tag = {tags[key]: name for key, name in ROLES.items()}
    return {"from": by_tag[message[tags["role_tag"]]], "value": message.get(tags["content_tag"])}


def _pair(record: Record, turns: list[dict], system, tools, sides: list[dict]) -> Record:
    converted = {"conversations": turns, "chosen": sides[0], "rejected": sides[1]}
    converted.update({key: value for key, value in (("system", system), ("tools", tools)) if value is not None})
    return Record(converted, record.source, record.line)
