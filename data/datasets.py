"""The training dataset: one or more weighted sources, each tokenized into its own token cache.

    train_dataset:
      _target_: data.datasets.TokenizedDataset
      sources:                      # name -> files (file, directory, glob or list) and sampling weight
        belle: {files: /data/belle/*.json, weight: 1.0}
        coig: {files: /data/coig, weight: 3.0}
        mixed: {files: "/data/panda/**/*.json", exclude: [valid, test]}   # paths below the folder with these left out
        panda: {files: ..., skip_wudao: true, wudao_sample_list: null}  # WuDaoCorpus* files only if listed (original)
      template: zh                  # prompt template of instruction records (data/templates.py)
      max_seq_length: 2048
      truncation: proportional      # too long: proportional | context_first | drop (data/labels.py)
      packing: false                # true: several samples per row (use data.collators.PackedCollator)

A weight w repeats a source's rows floor(w) times and adds a random subset (seeded by `seed` and the
source's position) of round(frac(w) × rows) more: 3.0 triples a source, 0.25 keeps a quarter of it.
Rows are the unit: a sample, a chunk of a long document, or with packing a packed row.

Every record is accounted for: the number read, skipped (by reason, with the first locations) and
trained on, per source, is logged and written to `<report_dir>/data_<name>.json`.
"""
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from data.cache import BuildSettings, TokenCache, load_or_build
from data.chat import check_chat_template
from data.formats import RecordOptions
from data.labels import TRUNCATION
from data.readers import DATA_SUFFIXES, TEXT_DOCUMENTS, expand_source
from data.records import BAD_RECORD_POLICIES
from data.templates import ChatTemplate, get_template
from general_util.dist import current
from general_util.errors import ConfigError
from general_util.paths import resolve_path

SOURCE_KEYS = {"files", "weight", "exclude", "skip_wudao", "wudao_sample_list"}
logger = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """Rows of the sources' token caches, mixed by weight: {input_ids, labels, seq_lens, index}."""
    kind = "sft"  # what the caches hold (data/cache.py BuildSettings.kind)

    def __init__(self, sources: Mapping[str, Mapping], tokenizer, max_seq_length: int = 2048,
                 template: str | Mapping = "zh", truncation: str = "proportional", packing: bool = False,
                 cache_dir: str | None = None, num_proc: int = 1, on_bad_record: str = "error",
                 report_dir: str | None = None, seed: int = 0, name: str = "train", shard_tokens: int = 1 << 24,
                 coig_rounds: str = "dialogue", moss_meta_instruction: str = "keep", text_documents: str = "auto"):
        check_settings(sources, max_seq_length, on_bad_record, truncation, text_documents)
        prompt_template = get_template(template)
        if isinstance(prompt_template, ChatTemplate):
            check_chat_template(tokenizer)
        record_options = RecordOptions(coig_rounds, moss_meta_instruction)
        self.name, self.source_names = name, list(sources)
        self.caches: list[TokenCache] = []
        weights = [float(source.get("weight", 1.0)) for source in sources.values()]
        self.files_left_out = {}
        for source_name, source in sources.items():
            files, self.files_left_out[source_name] = expand_source(source["files"], DATA_SUFFIXES,
                                                                    list(source.get("exclude") or ()),
                                                                    wudao_listed(source))
            settings = BuildSettings(files, tokenizer, prompt_template,
                                     max_seq_length, packing, on_bad_record, shard_tokens, num_proc, truncation,
                                     record_options, text_documents, name=f"{name}/{source_name}", kind=self.kind)
            self.caches.append(load_or_build(settings, cache_dir))
        self.blocks = mixture_blocks([len(cache) for cache in self.caches], weights, seed)
        if not self.blocks:
            raise ConfigError(f"weights={weights}: no rows left to train on")
        self.block_ends = np.cumsum([count for _, _, count in self.blocks])
        self.report = self._report(weights)
        self._log()
        if report_dir is not None and current().is_main:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            (Path(report_dir) / f"data_{name}.json").write_text(json.dumps(self.report, indent=1, ensure_ascii=False),
                                                                 encoding="utf-8")

    def __len__(self) -> int:
        return int(self.block_ends[-1])

    def _locate(self, index: int) -> tuple[TokenCache, int]:
        block = int(np.searchsorted(self.block_ends, index, side="right"))
        source, rows, _ = self.blocks[block]
        local = index - (int(self.block_ends[block - 1]) if block else 0)
        return self.caches[source], local if rows is None else int(rows[local])

    def __getitem__(self, index: int) -> dict:
        cache, row = self._locate(index)
        return {**cache.row(row), "index": index}

    def locations(self, index: int) -> list[str]:
        """Where the samples of row `index` come from ("file:line" each)."""
        cache, row = self._locate(index)
        return cache.locations(row)

    def _report(self, weights: list[float]) -> dict:
        rows_in_mix = np.zeros(len(self.caches), dtype=np.int64)
        for source, _, count in self.blocks:
            rows_in_mix[source] += count
        sources = {name: {"files": len(cache.meta["inputs"]["files"]), "files_left_out": self.files_left_out[name],
                          "weight": weight, "rows_in_mix": int(rows),
                          "cache": str(cache.directory), "cache_built_now": cache.built, **cache.meta["stats"]}
                   for name, cache, weight, rows in zip(self.source_names, self.caches, weights, rows_in_mix)}
        totals = {key: sum(s.get(key, 0) for s in sources.values())
                  for key in ("records", "skipped", "examples", "truncated", "prompt_lost", "dropped_too_long")}
        return {"dataset": self.name, "rows": len(self), **totals, "sources": sources}

    def _log(self) -> None:
        for name, s in self.report["sources"].items():
            if s["files_left_out"]:
                logger.info("data %s/%s: %d file(s) left out by the source's exclude list (or WuDao rule)", self.name, name,
                            s["files_left_out"])
            logger.info("data %s/%s: %d records read from %d file(s), %d skipped, %d samples trained on (%d truncated, "
                        "%d of them with no prompt token left; %d too long, dropped) → %d rows, %d tokens (%d trained); "
                        "weight %g → %d rows; cache %s %s", self.name, name, s["records"], s["files"], s["skipped"],
                        s["examples"], s["truncated"], s["prompt_lost"], s["dropped_too_long"], s["rows"], s["tokens"],
                        s["trained_tokens"], s["weight"], s["rows_in_mix"],
                        "built" if s["cache_built_now"] else "reused", s["cache"])
            if s["prompt_lost"]:
                logger.warning("data %s/%s: %d truncated samples keep no prompt token (their responses are trained "
                               "unconditioned); raise max_seq_length or use truncation=proportional or drop",
                               self.name, name, s["prompt_lost"])
            if s["skipped"]:
                logger.warning("data %s/%s: skipped %s; first: %s", self.name, name,
                               ", ".join(f"{reason} ×{n}" for reason, n in s["by_reason"].items()), "; ".join(s["first"]))
        r = self.report
        logger.info("data %s: %d records read, %d skipped, %d trained on → %d rows", self.name, r["records"],
                    r["skipped"], r["examples"], r["rows"])


class PreferenceDataset(TokenizedDataset):
    """Preference pairs (data/preference.py): each row is one pair, `seq_lens` [chosen, rejected], only the last
    response of each side labelled. The settings are TokenizedDataset's; packing does not apply (a row is a pair).
    Use `data.collators.PreferenceCollator`."""
    kind = "preference"

    def __init__(self, sources: Mapping[str, Mapping], tokenizer, packing: bool = False, **settings):
        if packing:
            raise ConfigError("packing=true: a preference dataset's row is one pair (chosen, rejected); set packing: false")
        super().__init__(sources, tokenizer, packing=False, **settings)


def wudao_listed(source: Mapping) -> set[Path] | None:
    """The WuDao files a source with `skip_wudao` reads: those its `wudao_sample_list` (a JSON list of paths,
    as the original's) names, none without one; None: WuDao files are read like any other."""
    if not source.get("skip_wudao"):
        return None
    listing = source.get("wudao_sample_list")
    if not listing:
        return set()
    path = resolve_path(listing)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"wudao_sample_list={listing}: not a readable JSON list of paths ({e})") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"wudao_sample_list={listing}: expected a JSON list of paths")
    return {resolve_path(name).resolve() for name in names}


def check_settings(sources: Mapping[str, Mapping], max_seq_length: int, on_bad_record: str, truncation: str,
                   text_documents: str) -> None:
    """Settings errors as one-line ConfigErrors (the trainer prints those without a traceback); the
    template and record options are checked where they are built."""
    if not sources:
        raise ConfigError("sources={}: give at least one source: {name: {files: ..., weight: ...}}")
    for name, source in sources.items():
        if set(source) - SOURCE_KEYS or "files" not in source:
            raise ConfigError(f"sources.{name}={dict(source)}: use the keys {sorted(SOURCE_KEYS)} (files required)")
        if float(source.get("weight", 1.0)) < 0:
            raise ConfigError(f"sources.{name}.weight={source['weight']}: must be ≥ 0")
    if max_seq_length < 2:
        raise ConfigError(f"max_seq_length={max_seq_length}: must be ≥ 2")
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ConfigError(f"on_bad_record={on_bad_record!r}: use one of {', '.join(BAD_RECORD_POLICIES)}")
    if truncation not in TRUNCATION:
        raise ConfigError(f"truncation={truncation!r}: use one of {', '.join(TRUNCATION)}")
    if text_documents not in TEXT_DOCUMENTS:
        raise ConfigError(f"text_documents={text_documents!r}: use one of {', '.join(TEXT_DOCUMENTS)}")


def mixture_blocks(sizes: list[int], weights: list[float], seed: int) -> list[tuple[int, np.ndarray | None, int]]:
    """(source, rows or None for all of them, count) blocks realising the weights; see the module doc."""
    blocks = []
    for source, (size, weight) in enumerate(zip(sizes, weights)):
        blocks += [(source, None, size)] * int(weight)
        extra = round((weight - int(weight)) * size)
        if extra:
            rows = np.sort(np.random.default_rng([seed, source]).choice(size, extra, replace=False))
            blocks.append((source, rows, extra))
    return blocks
