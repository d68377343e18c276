"""The training dataset: one or more weighted sources, each tokenized into its own token cache.

    train_dataset:
      _target_: data.datasets.TokenizedDataset
      sources:                      # name -> files (file, directory, glob or list) and sampling weight
        belle: {files: /data/belle/*.json, weight: 1.0}
        coig: {files: /data/coig, weight: 3.0}
        mixed: {files: "/data/panda/**/*.json", exclude: [valid, test]}   # paths below the folder with these left out
        panda: {files: ..., skip_wudao: true, wudao_sample_list: null}  # WuDaoCorpus* files only if listed (original)
        hub: {files: /data/clones/some_dataset, split: train}   # a hub dataset repository's data/<split>-*.parquet
        lf: {dataset: alpaca_zh_demo}   # an entry of the LLaMA-Factory dataset_info.json given as `dataset_info`
      template: zh                  # prompt template of instruction records (data/templates.py)
      max_seq_length: 2048
      truncation: proportional      # too long: proportional | context_first | drop (data/labels.py)
      packing: false                # true: several samples per row (base.yaml's collator then packs)

A weight w repeats a source's rows floor(w) times and adds a random subset (seeded by `seed` and the
source's position) of round(frac(w) × rows) more: 3.0 triples a source, 0.25 keeps a quarter of it.
Rows are the unit: a sample, a chunk of a long document, or with packing a packed row.

A mixture by token share instead (pretraining recipes: "70 % zh web, 20 % en, 10 % code over 100 B tokens"):

      mixture: {zh_web: 0.7, en: 0.2, code: 0.1}   # every source named, shares summing to 1
      mixture_tokens: 100_000_000_000               # the tokens one epoch of the dataset holds

Each source gives share × mixture_tokens tokens (rows' tokens, padding excluded; with raw text every one is
trained): whole passes over its rows, then the first rows of a permutation seeded by (`seed`, the source's
position, the pass) until the share is reached (over by less than one row). The sampler shuffles the whole,
so the order is seeded and an exact, elastic resume works as for any dataset. `dry_run` prints each source's
tokens, share and passes (epochs); the trainer logs `train/tokens/<source>`.

Or the budget as optimizer steps, `mixture_steps: 10_000` instead of mixture_tokens: an epoch of exactly steps ×
global batch rows (`global_batch`, from the run's batch settings), so that num_train_epochs=1 trains exactly that
many steps. Rows, not tokens, are what a step holds exactly: with packing a row holds up to max_seq_length tokens
(best-fit leaves some room), without it one sample, so a budget of steps × batch × max_seq_length tokens would
take more steps than asked. The token total is instead the largest whose draw (as above) fits in those rows, the
few rows left going to the sources furthest below their share: each source still gives its share of the total
(over by less than one row), and the same epoch whatever the world size, as the global batch is kept.

Every record is accounted for: the number read, skipped (by reason, with the first locations) and
trained on, per source, is logged and written to `<report_dir>/data_<name>.json`.
"""
import json
import logging
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from data.cache import BuildSettings, TokenCache, load_or_build
from data.chat import check_chat_template
from data.formats import RecordOptions
from data.labels import TRUNCATION
from data.llamafactory import load_entry
from data.readers import DATA_SUFFIXES, TEXT_DOCUMENTS, expand_source
from data.records import BAD_RECORD_POLICIES
from data.templates import ChatTemplate, get_template
from general_util import faults
from general_util.dist import current
from general_util.errors import ConfigError
from general_util.files import write_json_atomic
from general_util.paths import resolve_path

SOURCE_KEYS = {"files", "dataset", "weight", "exclude", "split", "skip_wudao", "wudao_sample_list"}
SHARE_TOLERANCE = 1e-6  # how far from 1 the shares of a mixture may sum
PASSES_KEPT = 4  # row orders of passes over a source a mixture keeps in memory at once
logger = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """Rows of the sources' token caches, mixed by weight: {input_ids, labels, seq_lens, index}."""
    kind = "sft"  # what the caches hold (data/cache.py BuildSettings.kind)

    def __init__(self, sources: Mapping[str, Mapping], tokenizer, max_seq_length: int = 2048,
                 template: str | Mapping = "zh", truncation: str = "proportional", packing: bool = False,
                 cache_dir: str | None = None, num_proc: int = 1, on_bad_record: str = "error",
                 report_dir: str | None = None, seed: int = 0, name: str = "train", shard_tokens: int = 1 << 24,
                 coig_rounds: str = "dialogue", moss_meta_instruction: str = "keep", text_documents: str = "auto",
                 piece_bytes: int = 1 << 26, mixture: Mapping[str, float] | None = None,
                 mixture_tokens: int | None = None, mixture_steps: int | None = None,
                 global_batch: Mapping[str, int] | None = None, dataset_info: str | None = None):
        check_settings(sources, max_seq_length, on_bad_record, truncation, text_documents)
        check_mixture(sources, mixture, mixture_tokens, mixture_steps)
        prompt_template = get_template(template)
        if isinstance(prompt_template, ChatTemplate):
            check_chat_template(tokenizer)
        record_options = RecordOptions(coig_rounds, moss_meta_instruction)
        self.name, self.source_names = name, list(sources)
        self.caches: list[TokenCache] = []
        weights = [float(source.get("weight", 1.0)) for source in sources.values()]
        self.files_left_out = {}
        for source_name, source in sources.items():
            options, documents = record_options, text_documents
            if "dataset" in source:  # an entry of LLaMA-Factory's registry (data/llamafactory.py)
                if dataset_info is None:
                    raise ConfigError(f"sources.{source_name}.dataset={source['dataset']}: set dataset_info to the "
                                      "dataset_info.json that defines it")
                source = {**load_entry(dataset_info, source["dataset"]), **source}
                if source["layout"]["ranking"] != (self.kind == "preference"):
                    raise ConfigError(f"sources.{source_name}.dataset={source['dataset']}: " + (
                        "a ranking entry (preference pairs): train it with a preference data node "
                        "(- /data@train_dataset: dpo)" if source["layout"]["ranking"] else
                        f"not a ranking entry, but {type(self).__name__} trains preference pairs"))
                options = RecordOptions(coig_rounds, moss_meta_instruction, source["layout"])
                documents = source["text_documents"]
            files, self.files_left_out[source_name] = expand_source(source["files"], DATA_SUFFIXES,
                                                                    list(source.get("exclude") or ()),
                                                                    wudao_listed(source), source.get("split", "train"))
            settings = BuildSettings(files, tokenizer, prompt_template,
                                     max_seq_length, packing, on_bad_record, shard_tokens, num_proc, truncation,
                                     options, documents, name=f"{name}/{source_name}", piece_bytes=piece_bytes,
                                     kind=self.kind)
            self.caches.append(load_or_build(settings, cache_dir))
        self.mixture, self.mixture_steps = None, None
        if mixture:
            shares = [float(mixture[source_name]) for source_name in sources]
            if mixture_steps is not None:
                self.mixture_steps = (int(mixture_steps), step_rows(global_batch))
                budget = {"rows": self.mixture_steps[0] * self.mixture_steps[1]}
            else:
                budget = {"total": int(mixture_tokens)}
            self.blocks, self.mixture = token_share_blocks(self.row_tokens, shares, seed, **budget)
        else:
            self.blocks = mixture_blocks([len(cache) for cache in self.caches], weights, seed)
        if not self.blocks:
            raise ConfigError(f"weights={weights}: no rows left to train on")
        self.block_ends = np.cumsum([count for _, _, count in self.blocks])
        self.report = self._report(weights)
        self._log()
        if report_dir is not None and current().is_main:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            report = Path(report_dir) / f"data_{name}.json"
            faults.fire("data_stats", 0, str(report))  # test-only: LLAMA_TRAINER_FAULT=enospc@data_stats=0
            write_json_atomic(report, self.report, indent=1, ensure_ascii=False)

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

    @cached_property
    def row_tokens(self) -> list[np.ndarray]:
        """Every source's tokens per row (read from the caches' row tables when first needed)."""
        return [cache.row_tokens() for cache in self.caches]

    def tokens_by_source(self, indices) -> np.ndarray:
        """Tokens of the rows at dataset `indices`, summed per source (in `source_names` order)."""
        indices = np.asarray(indices, dtype=np.int64)
        blocks = np.searchsorted(self.block_ends, indices, side="right")
        totals = np.zeros(len(self.caches), dtype=np.int64)
        for index, block in zip(indices.tolist(), blocks.tolist()):
            source, rows, _ = self.blocks[block]
            local = index - (int(self.block_ends[block - 1]) if block else 0)
            totals[source] += self.row_tokens[source][local if rows is None else int(rows[local])]
        return totals

    def mixture_lines(self) -> list[str]:
        """What `dry_run` prints of the mixture by token share: each source's tokens, share and passes."""
        if self.mixture is None:
            return []
        total = sum(m["tokens"] for m in self.mixture)
        lines = [f"mixture {name}: {m['tokens']:,} tokens, share {m['tokens'] / total:.4f} (asked {m['share']:g}), "
                 f"{m['epochs']:.3f} epochs of its {m['source_tokens']:,} tokens"
                 for name, m in zip(self.source_names, self.mixture)]
        if self.mixture_steps:
            steps, rows = self.mixture_steps
            lines.append(f"mixture: {steps:,} optimizer steps of {rows:,} rows = {len(self):,} rows, {total:,} tokens")
        return lines

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
        for name, mixed in zip(self.source_names, self.mixture or ()):
            sources[name]["mixture"] = mixed
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
        for line in self.mixture_lines():
            logger.info("data %s: %s", self.name, line)
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
            raise ConfigError("packing=true: a preference dataset's row is one pair (chosen, rejected), a KTO "
                              "dataset's one example; set packing: false")
        super().__init__(sources, tokenizer, packing=False, **settings)


class KtoDataset(PreferenceDataset):
    """KTO's unpaired examples (data/preference.py `to_kto`): each row is one example with its `label` (true:
    desirable), only its last response labelled. The settings are TokenizedDataset's; packing does not apply. Use
    `data.collators.KtoCollator`."""
    kind = "kto"


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
        if set(source) - SOURCE_KEYS or ("files" in source) == ("dataset" in source):
            raise ConfigError(f"sources.{name}={dict(source)}: use the keys {sorted(SOURCE_KEYS)} (files, or dataset: "
                              "a dataset_info.json entry)")
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


def check_mixture(sources: Mapping[str, Mapping], mixture: Mapping[str, float] | None, mixture_tokens,
                  mixture_steps=None) -> None:
    """A mixture by token share names every source once, with shares > 0 summing to 1, and a budget: tokens or
    optimizer steps, not both; its sources keep the default weight (the two ways of mixing do not combine)."""
    if not mixture:
        for key, value in (("mixture_tokens", mixture_tokens), ("mixture_steps", mixture_steps)):
            if value is not None:
                raise ConfigError(f"{key}={value}: give `mixture: {{source: share, ...}}` too")
        return
    if mixture_steps is not None:
        if mixture_tokens is not None:
            raise ConfigError(f"mixture_tokens={mixture_tokens}, mixture_steps={mixture_steps}: give the budget "
                              "one way, tokens or optimizer steps")
        if int(mixture_steps) <= 0:
            raise ConfigError(f"mixture_steps={mixture_steps}: must be > 0")
    if set(mixture) != set(sources):
        raise ConfigError(f"mixture={dict(mixture)}: name every source once ({', '.join(sources)})")
    if any(float(share) <= 0 for share in mixture.values()) or \
            abs(sum(float(share) for share in mixture.values()) - 1) > SHARE_TOLERANCE:
        raise ConfigError(f"mixture={dict(mixture)}: shares must be > 0 and sum to 1")
    if mixture_steps is None and (mixture_tokens is None or int(mixture_tokens) <= 0):
        raise ConfigError(f"mixture_tokens={mixture_tokens}: a mixture needs its total of tokens (> 0) or "
                          "mixture_steps")
    weighted = [name for name, source in sources.items() if float(source.get("weight", 1.0)) != 1.0]
    if weighted:
        raise ConfigError(f"sources {weighted} have a weight and the dataset a mixture by token share: use one of them")


class SourceDraw:
    """The order a mixture draws one source's rows in: whole passes, each followed (when the share ends inside
    it) by the rows of a permutation seeded by (seed, source, pass); `count` rows of it are the first `count`."""

    def __init__(self, tokens: np.ndarray, source: int, seed: int):
        self.tokens, self.source, self.seed = tokens, source, seed
        self.total, self.size = int(tokens.sum()), len(tokens)
        self._passes: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the few last used (a search visits many)

    def _pass(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """(row order, cumulative tokens) of pass `number`."""
        if number not in self._passes:
            if len(self._passes) >= PASSES_KEPT:
                del self._passes[next(iter(self._passes))]
            order = np.random.default_rng([self.seed, self.source, number]).permutation(self.size)
            self._passes[number] = order, np.cumsum(self.tokens[order])
        return self._passes[number]

    def count_for(self, target: int) -> int:
        """The rows drawn to give `target` tokens (over by less than one row)."""
        passes, left = divmod(target, self.total)
        return passes * self.size + (int(np.searchsorted(self._pass(passes)[1], left)) + 1 if left else 0)

    def tokens_of(self, count: int) -> int:
        passes, rows = divmod(count, self.size)
        return passes * self.total + (int(self._pass(passes)[1][rows - 1]) if rows else 0)

    def blocks(self, count: int) -> list[tuple[int, np.ndarray | None, int]]:
        passes, rows = divmod(count, self.size)
        blocks = [(self.source, None, self.size)] * passes
        if rows:
            blocks.append((self.source, np.sort(self._pass(passes)[0][:rows]), rows))
        return blocks


def step_rows(global_batch: Mapping[str, int] | None) -> int:
    """The rows of one optimizer step: per_gpu × accumulation × data-parallel ranks (world / sequence_parallel),
    as the trainer's global batch (which a resume on another world size keeps)."""
    if not global_batch or set(global_batch) != {"per_gpu", "accumulation", "sequence_parallel"}:
        raise ConfigError(f"global_batch={global_batch}: mixture_steps needs {{per_gpu, accumulation, "
                          "sequence_parallel}} (conf/data/pretrain.yaml sets them from the run's batch settings)")
    data_parallel = current().world_size // int(global_batch["sequence_parallel"])
    return int(global_batch["per_gpu"]) * int(global_batch["accumulation"]) * data_parallel


def token_share_blocks(row_tokens: list[np.ndarray], shares: list[float], seed: int, *, total: int | None = None,
                       rows: int | None = None) -> tuple[list[tuple[int, np.ndarray | None, int]], list[dict]]:
    """Blocks (as `mixture_blocks`) giving source s share_s × total tokens (`SourceDraw`'s order), and what each
    source gives; the budget is `total` tokens (mixture_tokens) or `rows` rows (mixture_steps: the total is the
    largest whose draw fits in `rows` rows, and any rows left, of sources whose next row comes at the same total,
    go one each to the sources furthest below their share, so that exactly `rows` are drawn)."""
    draws = [SourceDraw(tokens, source, seed) for source, tokens in enumerate(row_tokens)]

    def counts(total: int) -> list[int]:
        return [draw.count_for(round(share * total)) for draw, share in zip(draws, shares)]

    if rows is not None:  # the rows drawn grow with the total; rows(low) ≤ rows < rows(high)
        low, high = 0, rows * max(int(tokens.max()) for tokens in row_tokens) + 1
        while sum(counts(high)) <= rows:
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if sum(counts(middle)) <= rows else (low, middle)
        total = low
    drawn_rows = counts(total)
    for _ in range(0 if rows is None else rows - sum(drawn_rows)):
        behind = min(range(len(draws)), key=lambda s: draws[s].tokens_of(drawn_rows[s]) / shares[s])
        drawn_rows[behind] += 1
    blocks, drawn = [], []
    for draw, share, count in zip(draws, shares, drawn_rows):
        blocks += draw.blocks(count)
        given = draw.tokens_of(count)
        drawn.append({"share": share, "budget_tokens": total, "target_tokens": round(share * total), "tokens": given,
                      "rows": count, "source_tokens": draw.total, "epochs": given / draw.total})
    return blocks, drawn
