"""Train (and evaluate) a LLaMA-family model with DeepSpeed, configured by Hydra.

    python trainer.py -cp conf/demo -cn sft                      # one process (CPU or one GPU)
    deepspeed --num_gpus 2 trainer.py -cp conf/demo -cn sft      # two ranks
    deepspeed --include localhost:0,1,2,3,4,5,6,7 trainer.py -cp conf/llama/zh -cn llama_7b_zh_instruct_v1_0_ds

Every key is declared, with its effect, in conf/base.yaml; override any of them on the command line
(`learning_rate=1e-5`).
"""
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from data.collators import fit_to_model
from general_util import faults
from general_util.cli import convert_legacy_arguments
from general_util.dist import (DistContext, all_reduce, consume_local_rank_arg, decided_by_rank0, exit_process,
                               gather_objects, init_distributed, lost_peer_error, teardown)
from general_util.errors import ConfigError, UserError, find_user_error, one_line
from general_util.files import write_json_atomic
from general_util.fingerprints import data_fingerprint, tokenizer_fingerprint
from general_util.logging import MetricsWriter, setup_logging
from general_util.seeding import set_seed
from modules.flops import active_parameter_count, device_peak_flops, training_flops_per_token
from modules import sequence_parallel
from modules.loss_impl import LossSettings, router_aux_loss_coef
from post_processors.run import reported_metrics, run_evaluators
from post_processors.summary import write_summary
from training import checkpoints as ckpt
from training.best import BestTracker, match_metric, metric_problem
from training.config import human_bytes, optimizer_steps, validate
from training.engine import build_engine, engine_of, load_model
from training.hf_export import HFExport, save_hf_weights
from training.reference import attach_reference
from training.rng_state import restore_rng_state
from training.run_folder import OutputDirError, OutputDirLock, check_fresh_start
from training.saving import check_free_space, save_checkpoint, write_failure
from training.state import Layout, Split, TrainerState

OmegaConf.register_new_resolver("eq", lambda a, b: a == b, replace=True)
logger = logging.getLogger("trainer")


def count_parameters(cfg: DictConfig, tokenizer) -> int:
    """Parameter count from the model config alone (meta device: nothing is allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from models.model_dir import local_model_dir
    config = AutoConfig.from_pretrained(local_model_dir(cfg.model_name_or_path))
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@dataclass
class LogWindow:
    """What the optimizer steps since the last log add up to; the loop starts a new one at every log."""
    losses: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (loss sums, normalisers) per step
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # the objective's metrics: name -> [sum, count]
    maxima: dict[str, torch.Tensor] = field(default_factory=dict)  # the objective's maxima: name -> largest so far
    tokens: int = 0    # non-padding tokens
    slots: int = 0     # token positions, padding included
    rows: int = 0
    samples: int = 0
    row_shards: int = 1  # sequence_parallel_size: each rank holds 1/row_shards of every row
    source_tokens: list[int] = field(default_factory=list)  # per source of a mixed dataset (train/tokens/<source>)

    def add_step(self, loss_sums: torch.Tensor, normalisers: torch.Tensor) -> None:
        self.losses.append((loss_sums, normalisers))

    def add_metrics(self, metrics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (total, count) in metrics.items():
            pair = torch.stack([total.detach().double().reshape(()), count.detach().double().reshape(())])
            self.metrics[name] = self.metrics[name] + pair if name in self.metrics else pair

    def add_maxima(self, maxima: dict[str, torch.Tensor]) -> None:
        for name, value in maxima.items():
            value = value.detach().double().reshape(())
            self.maxima[name] = torch.maximum(self.maxima[name], value) if name in self.maxima else value

    def add_batch(self, batch: dict) -> None:
        self.tokens += int(batch["num_tokens"])
        self.slots += batch["input_ids"].numel()
        self.rows += batch["input_ids"].shape[0]
        self.samples += int(batch["num_samples"])

    @property
    def mean_row_length(self) -> float:
        """The sequence length attention FLOPs are counted at (padded rows, as computed)."""
        return self.slots * self.row_shards / max(1, self.rows)


class TrainingError(UserError, RuntimeError):
    """Training cannot go on; the message is one line."""


@dataclass
class TrainerHooks:
    """What a benchmark or a test plugs into the loop (instead of patching it)."""
    on_log: Callable[[int, dict[str, float]], None] | None = None  # after each log line: (step, logged values)
    save_checkpoints: bool = True  # false: no checkpoint is written (a benchmark measuring training steps only)


class Trainer:
    """The training loop and what it delegates to (logging, evaluation, checkpoints)."""

    def __init__(self, cfg: DictConfig, ctx: DistContext, tokenizer, train_data, evaluators: dict,
                 hooks: TrainerHooks | None = None, resume_from: Path | None = None):
        self.cfg, self.ctx, self.tokenizer = cfg, ctx, tokenizer
        self.train_data, self.evaluators = train_data, evaluators
        self.hooks = hooks or TrainerHooks()
        self.output_dir = Path(cfg.output_dir)
        self.export = HFExport(tokenizer, OmegaConf.to_yaml(cfg, resolve=True), cfg.save_merged)
        self.parallel = sequence_parallel.ParallelLayout.of(ctx.rank, ctx.world_size, cfg.sequence_parallel_size)
        self.micro_per_epoch, self.total_steps = optimizer_steps(len(train_data), cfg, self.parallel.dp_size)
        self.step = 0  # the data position is the sampler's (data/sampler.py)
        self.fingerprints = {"data": data_fingerprint(train_data), "tokenizer": tokenizer_fingerprint(tokenizer)}
        self.stop_requested = False
        self.stopped = False  # the loop ended on a stop request (SIGTERM on any rank), not at total_steps
        self.tracker_runs: dict[str, str] = {}  # W&B / MLflow run ids to continue (kept in every checkpoint)
        self.stream = None  # the micro-batch generator (holds the data-loader workers) while training
        self.nan_skips = 0
        self.last_eval: dict[str, float] = {}
        self.best = BestTracker(self.output_dir, cfg.prediction_cfg.metric, cfg.prediction_cfg.measure)
        # a dataset of several sources logs the tokens each gave (data/datasets.py); ranks of a sequence-parallel
        # group share each row, so only its first rank counts them
        sources = getattr(train_data, "source_names", [])
        self.sources = sources if len(sources) > 1 and hasattr(train_data, "tokens_by_source") else []
        self.window = self.new_window()
        self.last_log_time = time.perf_counter()
        self.peak_flops = device_peak_flops(cfg.peak_flops_per_gpu)
        self.resume_point = self.checked_resume_point(resume_from)
        self.loss_settings = LossSettings(cfg.loss_impl, cfg.loss_chunk_tokens)
        self.objective = instantiate(cfg.objective)
        self.updates_per_step = getattr(self.objective, "num_iterations", 1)  # optimizer updates per loop step

    # ---- set-up -------------------------------------------------------------------------------------
    def checked_resume_point(self, resume_from: Path | None) -> tuple[Path | None, TrainerState | None]:
        """The checkpoint to continue and, when it is continued exactly, its trainer state, checked against this
        run before anything big is built (a refusal costs no model load)."""
        if resume_from is None or self.cfg.resume_mode != "exact":
            return resume_from, None
        return resume_from, TrainerState.read(resume_from, self.layout())

    def setup(self, model) -> None:
        resume_from, state = self.resume_point
        self.num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: partitioned
        self.active_params = active_parameter_count(model)  # MoE: the experts a token is routed to, not all
        coef = router_aux_loss_coef(model)  # None: a dense model
        self.objective.router_loss_coef = coef if coef is None or self.cfg.moe_aux_loss_coef is None \
            else self.cfg.moe_aux_loss_coef
        reshard_from = state.split.world_size if state and state.split.world_size != self.ctx.world_size else None
        # the lr schedule counts optimizer updates: a step of GRPO with num_iterations μ makes μ of them
        self.engine = build_engine(self.cfg, model, self.ctx, self.parallel, self.total_steps * self.updates_per_step,
                                   reshard_from)
        from data.sampler import DistributedEpochSampler
        # the ranks of a sequence-parallel group read the same samples
        self.sampler = DistributedEpochSampler(len(self.train_data), self.parallel.dp_rank, self.parallel.dp_size,
                                               self.cfg.seed, self.cfg.per_gpu_train_batch_size,
                                               self.cfg.gradient_accumulation_steps)
        self.collator = instantiate(self.cfg.collator, tokenizer=self.tokenizer)
        fit_to_model(self.collator, model.config)  # packed rows: the model's sliding window in their mask
        self.train_data = attach_reference(self.objective, self.cfg, self.tokenizer, self.engine, self.ctx,
                                           self.loss_settings, self.train_data, self.collator)
        if resume_from is not None:
            self.resume(resume_from, state)
        self.metrics = MetricsWriter(self.output_dir, self.ctx, self.total_steps, self.step, self.cfg.report_to,
                                     OmegaConf.to_container(self.cfg, resolve=True), self.tracker_runs,
                                     OmegaConf.to_container(self.cfg.tracking, resolve=True))
        signal.signal(signal.SIGTERM, self.request_stop)
        logger.info("%d samples, %d micro-batches per rank per epoch, %d optimizer steps (data-parallel ranks %d × "
                    "micro batch %d × accumulation %d = %d samples per step; sequence parallel %d)", len(self.train_data),
                    self.micro_per_epoch, self.total_steps, self.parallel.dp_size, self.cfg.per_gpu_train_batch_size,
                    self.cfg.gradient_accumulation_steps, self.samples_per_step, self.parallel.sp_size)

    def layout(self) -> Layout:
        """What a checkpoint must match to continue this run exactly (training/state.py)."""
        return Layout(global_batch_size=self.samples_per_step, sequence_parallel_size=self.parallel.sp_size,
                      **engine_of(self.cfg).checkpoint_layout(self.cfg), seed=self.cfg.seed,
                      data_fingerprint=self.fingerprints["data"], tokenizer_fingerprint=self.fingerprints["tokenizer"])

    def split(self) -> Split:
        return Split(world_size=self.ctx.world_size, per_gpu_train_batch_size=self.cfg.per_gpu_train_batch_size,
                     gradient_accumulation_steps=self.cfg.gradient_accumulation_steps)

    def resume(self, checkpoint: Path, state: TrainerState | None) -> None:
        """Continue from `checkpoint`: exactly (weights, optimizer, scheduler, step, data position, RNG), with
        its trainer `state` checked by `setup`, or, with resume_mode=weights_only (`state` None), from its
        weights alone with a fresh optimizer at step 0."""
        if state is None:
            self.engine.load(checkpoint, saved_world_size=self.ctx.world_size, weights_only=True)
            logger.info("initialised weights from %s (resume_mode=weights_only: fresh optimizer, step 0)", checkpoint)
            return
        self.step, self.tracker_runs = state.step, state.tracker_runs
        self.sampler.load_state_dict(state.data_position)
        self.engine.load(checkpoint, saved_world_size=state.split.world_size, weights_only=False)
        if state.split.world_size == self.ctx.world_size:
            restore_rng_state(checkpoint, self.ctx.rank)
        else:
            # Per-rank RNG states cannot be carried over to another number of ranks (and each sample now meets
            # another rank anyway). The data order never depends on them; random layers (dropout) continue from
            # a fresh seed derived from (seed, step), the same on every rank as at a fresh start.
            set_seed(self.cfg.seed + self.step)
        logger.info("resumed from %s at step %d (epoch %d, sample %d of the epoch; saved at world size %d, now %d)",
                    checkpoint, self.step, state.epoch, state.samples_in_epoch, state.split.world_size,
                    self.ctx.world_size)

    def request_stop(self, signum, frame) -> None:
        """SIGTERM (schedulers send it before preemption): finish this step, save, exit 0."""
        logger.warning("received signal %d: saving a checkpoint after the current step, then stopping", signum)
        self.stop_requested = True

    @property
    def samples_per_step(self) -> int:
        return self.parallel.dp_size * self.cfg.per_gpu_train_batch_size * self.cfg.gradient_accumulation_steps

    def micro_batches(self):
        """Endless stream of this rank's micro-batches from the sampler's data position, one pass per epoch. The
        loop advances the sampler after each step, so a pass ends with the sampler at the next epoch's start."""
        while True:
            epoch = self.sampler.epoch
            loader = DataLoader(self.train_data, batch_size=self.cfg.per_gpu_train_batch_size, sampler=self.sampler,
                                collate_fn=self.collator, num_workers=self.cfg.num_workers,
                                pin_memory=self.ctx.device.type == "cuda",
                                # worker seeds depend on (seed, epoch) only, so a resumed epoch gets the same ones
                                generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch))
            yield from map(self.shard, loader)

    def shard(self, batch: dict) -> dict:
        """This rank's share of every row of a micro-batch (all of it without sequence parallelism)."""
        if self.parallel.sp_size == 1:
            return batch
        return sequence_parallel.shard_batch(batch, self.parallel, self.tokenizer.pad_token_id)

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Train, then (do_eval) evaluate the final weights once more unless that step was just evaluated or the
        run was stopped on request (SIGTERM: it saves and leaves), writing `eval_results.json`. The trackers close
        after that evaluation (its scalars go to the same runs), and also on errors (the bar must not print after
        the error line)."""
        try:
            self.train_loop()
            self.close_data()
            if self.cfg.do_eval and not self.stopped:  # a stop on request (preemption) leaves at once
                self.final_evaluation()
        finally:
            self.close_data()
            self.metrics.close()

    def final_evaluation(self) -> None:
        if self.cfg.evaluate_during_training and self.step % self.cfg.eval_steps == 0:
            metrics = self.last_eval
        else:
            metrics = self.evaluate(f"step-{self.step}")
        if self.ctx.is_main:
            write_json_atomic(self.output_dir / "eval_results.json", {"step": self.step, **metrics})

    def train(self) -> None:
        """Train only, then close the trackers (the benchmarks: no final evaluation)."""
        try:
            self.train_loop()
        finally:
            self.close_data()
            self.metrics.close()

    def close_data(self) -> None:
        """Stop the data-loader workers (closing the generator drops its loader iterator); idempotent."""
        if self.stream is not None:
            self.stream.close()

    def train_loop(self) -> None:
        self.engine.train()
        stream = self.stream = self.micro_batches()
        accumulation = self.cfg.gradient_accumulation_steps
        while self.step < self.total_steps:
            window = [next(stream) for _ in range(accumulation)]
            if hasattr(self.objective, "rollout"):  # RL: prompts -> sampled, scored completions (modules/grpo.py)
                window = self.objective.rollout(window, self.engine, self.tokenizer, self.ctx, self.step)
            stop, skipped = False, 0
            for _ in range(self.updates_per_step):  # GRPO's num_iterations: updates on one generation batch
                stop = self.optimizer_step(window) or stop
                skipped += not self.engine.was_step_applied()
            self.step += 1
            self.sampler.advance()
            for _ in range(skipped):
                self.non_finite_step(window)
            self.metrics.advance()
            if self.step % self.cfg.logging_steps == 0 or self.step == self.total_steps or stop:
                self.log()
            if stop:
                logger.warning("stopping at step %d on request; continue with resume=auto", self.step)
                self.stopped = True
                break
            self.maybe_evaluate()
            self.maybe_save()
            faults.fire("step", self.step)  # test-only: LLAMA_TRAINER_FAULT=kill@step=N (general_util/faults.py)
        if not ckpt.checkpoint_dir(self.output_dir, self.step).exists():
            self.save()

    def optimizer_step(self, window: list[dict]) -> bool:
        """One optimizer step over an accumulation window; returns whether any rank was asked to stop.
        Each loss sum of the objective (modules/objectives.py) is normalised by its count over the whole global
        batch (causal LM: label tokens), so the loss is independent of world size, sequence parallelism and
        accumulation (a sequence-parallel rank counts and scores the targets of its shard only)."""
        normalisers = torch.stack([self.objective.normalisers(b) for b in window]).sum(0)
        # one collective agrees on the normalisers and a stop request (all ranks stop at the same step)
        agreed = all_reduce(torch.cat([normalisers.reshape(-1).double(), torch.tensor([float(self.stop_requested)],
                                                                                      dtype=torch.float64)])
                            .to(self.ctx.device))
        normalisers = agreed[:-1].reshape(normalisers.shape)
        # the engine turns this into the global batch's gradient (the sum over a sequence-parallel group is
        # wanted: each rank's shard loss reaches every rank's weights through the attention all-to-all)
        scale = 1.0 / normalisers.clamp(min=1)
        loss_sums = torch.zeros(normalisers.shape, dtype=torch.float64, device=self.ctx.device)
        for batch in window:
            self.window.add_batch(batch)
            self.count_sources(batch)
            output = self.objective.loss(self.engine.model, batch, self.loss_settings, self.ctx.device)
            self.engine.backward((output.loss_sums * scale.to(output.loss_sums.dtype)).sum())
            self.engine.step()
            loss_sums += output.loss_sums.detach().double()
            self.window.add_metrics(output.metrics)
            self.window.add_maxima(output.maxima)
        self.window.add_step(loss_sums, normalisers)
        return bool(agreed[-1].item())

    def new_window(self) -> LogWindow:
        return LogWindow(row_shards=self.parallel.sp_size, source_tokens=[0] * len(self.sources))

    def count_sources(self, batch: dict) -> None:
        if self.sources and self.parallel.sp_rank == 0:
            given = self.train_data.tokens_by_source(batch["index"].tolist())
            self.window.source_tokens = [a + int(b) for a, b in zip(self.window.source_tokens, given)]

    def log(self) -> None:
        """Mean loss over the steps since the last log (exact global token mean per step), lr, grad norm,
        throughput; one collective per logging step (a second for an objective's maxima)."""
        window = self.window
        names = sorted(window.metrics)  # every rank's objective reports the same names
        counts = [*window.source_tokens, window.tokens, window.slots, window.samples]
        local = torch.cat([loss.reshape(-1) for loss, _ in window.losses] + [window.metrics[n] for n in names]
                          + [torch.tensor([float(n) for n in counts], dtype=torch.float64, device=self.ctx.device)])
        totals = all_reduce(local)
        losses, offset = [], 0
        for _, normalisers in window.losses:  # a step's loss: Σ over the objective's loss sums of sum / count
            width = normalisers.numel()
            losses.append((totals[offset:offset + width] / normalisers.reshape(-1)).sum())
            offset += width
        metrics = totals[offset:offset + 2 * len(names)].reshape(-1, 2)
        offset += 2 * len(names)
        by_source = totals[offset:offset + len(window.source_tokens)].tolist()
        elapsed = time.perf_counter() - self.last_log_time
        grad_norm = self.engine.grad_norm()
        values = {"train/loss": torch.stack(losses).mean().item(), "train/lr": self.engine.lr(),
                  "train/grad_norm": grad_norm if grad_norm is not None else float("nan"),
                  "train/tokens_per_second": totals[-3].item() / elapsed,
                  "train/samples_per_second": totals[-1].item() / elapsed,
                  "train/non_pad_fraction": totals[-3].item() / totals[-2].item(),
                  **{f"train/{name}": (total / count).item() for name, (total, count) in zip(names, metrics) if count > 0},
                  **{f"train/tokens/{name}": tokens for name, tokens in zip(self.sources, by_source)}}
        if window.maxima:  # a second collective, only for an objective that reports maxima (GRPO's lengths)
            names = sorted(window.maxima)
            largest = all_reduce(torch.stack([window.maxima[n] for n in names]).to(self.ctx.device), "max")
            values.update({f"train/{name}": value for name, value in zip(names, largest.tolist())})
        if self.peak_flops:
            config = self.engine.module.config
            flops_per_token = training_flops_per_token(self.active_params, config.num_hidden_layers,
                                                       config.hidden_size, window.mean_row_length)
            values["train/mfu"] = values["train/tokens_per_second"] * flops_per_token / (self.peak_flops * self.ctx.world_size)
        self.metrics.scalars(values, self.step)
        if self.hooks.on_log:
            self.hooks.on_log(self.step, values)
        postfix = {"loss": f"{values['train/loss']:.4f}", "lr": f"{values['train/lr']:.2e}",
                   "tok/s": f"{values['train/tokens_per_second']:.0f}"}
        if "train/mfu" in values:
            postfix["mfu"] = f"{values['train/mfu']:.1%}"
        self.metrics.advance(0, postfix)
        logger.info("step %d/%d epoch %d %s", self.step, self.total_steps, self.sampler.epoch,
                    " ".join(f"{k.removeprefix('train/')}={v:.6g}" for k, v in values.items()),
                    extra={"step": self.step})
        self.window = self.new_window()
        self.last_log_time = time.perf_counter()

    def non_finite_step(self, window: list[dict]) -> None:
        """DeepSpeed skipped the update because the loss or gradient norm was not finite (the check is
        all-reduced, so every rank gets here at the same step)."""
        self.nan_skips += 1
        self.metrics.scalars({"train/nan_skips": self.nan_skips}, self.step)
        indices = sorted(int(i) for rank_indices in gather_objects([b["index"].tolist() for b in window])
                         for batch_indices in rank_indices for i in batch_indices)
        if self.cfg.nan_policy == "stop":
            path = self.output_dir / "nan_diagnostics.json"
            if self.ctx.is_main:
                write_json_atomic(path, {"step": self.step, "epoch": self.sampler.epoch, "sample_indices": indices,
                                         "lr": self.engine.lr()})
            raise TrainingError(f"non-finite loss or gradient norm at step {self.step} (nan_policy=stop); "
                                f"the batch's sample indices are in {path}")
        logger.warning("step %d: non-finite loss or gradient norm, update skipped (%d of at most %d; samples %s)",
                       self.step, self.nan_skips, self.cfg.max_nan_skips, indices)
        if self.nan_skips > self.cfg.max_nan_skips:
            raise TrainingError(f"{self.nan_skips} non-finite steps exceed max_nan_skips={self.cfg.max_nan_skips}; "
                                f"lower learning_rate or inspect the samples logged in {self.output_dir / 'logs'}")

    # ---- evaluation and checkpoints -----------------------------------------------------------------
    def evaluate(self, tag: str) -> dict[str, float]:
        """Run every evaluator (on all ranks) and log `eval/<evaluator>/<metric>`."""
        self.engine.eval()
        metrics = run_evaluators(self.evaluators, self.engine.model, self.tokenizer, self.output_dir / "eval" / tag, tag,
                                 self.loss_settings)
        self.engine.train()
        self.metrics.scalars({f"eval/{k}": v for k, v in metrics.items()}, self.step)
        self.last_eval = metrics
        return metrics

    def maybe_evaluate(self) -> None:
        if not (self.cfg.evaluate_during_training and self.step % self.cfg.eval_steps == 0):
            return
        metrics = self.evaluate(f"step-{self.step}")
        will_save = self.cfg.save_steps > 0 and self.step % self.cfg.save_steps == 0
        checkpoint = ckpt.checkpoint_dir(self.output_dir, self.step).name if will_save else None
        if self.best.update(metrics, self.step, checkpoint):
            if self.ctx.is_main:
                self.best.write()
            if self.cfg.save_best:
                save_hf_weights(self.engine, self.output_dir / "best", self.export, self.ctx)

    def maybe_save(self) -> None:
        if self.cfg.save_steps > 0 and self.step % self.cfg.save_steps == 0:
            self.save()

    def save(self) -> None:
        if not self.hooks.save_checkpoints:
            return
        state = TrainerState(step=self.step, **self.sampler.state_dict(), tracker_runs=self.metrics.run_ids,
                             split=self.split(), layout=self.layout())
        check_free_space(self.output_dir, self.step, self.cfg.save_space_check, self.ctx)
        save_checkpoint(self.engine, self.output_dir, self.step, state, self.export, self.ctx)
        self.metrics.checkpoint()  # the trackers keep every step up to this resume point
        if self.ctx.is_main:
            ckpt.apply_retention(self.output_dir, self.cfg.save_total_limit,
                                 {self.best.best_checkpoint} if self.best.best_checkpoint else set())


def build_trainer(cfg: DictConfig, ctx: DistContext, *, tokenizer=None, train_data=None,
                  hooks: TrainerHooks | None = None, resume_from: Path | None = None) -> Trainer:
    """The one way to make a Trainer (the entry point, the benchmarks, the in-process tests): tokenizer, data,
    evaluators and model from `cfg` unless given (a benchmark passes synthetic `train_data`), the engine built
    and `resume_from`, the checkpoint `resume` designates (claim_output_dir resolves it), loaded. `trainer.run()`
    then trains and evaluates. The process group must exist (general_util.dist.init_distributed)."""
    if tokenizer is None:
        set_seed(cfg.seed)
        tokenizer = instantiate(cfg.tokenizer)
    if train_data is None:
        train_data = instantiate(cfg.train_dataset, tokenizer=tokenizer)
    evaluators = build_evaluators(cfg, sweep=False)
    trainer = Trainer(cfg, ctx, tokenizer, train_data, evaluators, hooks, resume_from)
    trainer.setup(load_model(cfg, tokenizer))
    return trainer


def build_evaluators(cfg: DictConfig, sweep: bool) -> dict:
    """The configured evaluators (do_eval), each reading its data (lm-eval: its task index and datasets), and
    `prediction_cfg.metric` checked against what they will report (training/best.metric_problem), all before a
    model is loaded; every problem found is reported at once, in one line."""
    if not cfg.do_eval:
        return {}
    evaluators, failures = {}, []
    for name, node in cfg.evaluators.items():
        try:
            evaluators[name] = instantiate(node)
        except Exception as error:  # noqa: BLE001 - a user error is collected, anything else re-raised
            if find_user_error(error) is None:
                raise
            failures.append((name, error))
    if len(failures) == 1:
        raise failures[0][1]  # as it was raised (its type and exit code)
    if failures:
        messages = [(name, one_line(error).removeprefix("error: ")) for name, error in failures]
        raise ConfigError("; ".join(text if text.startswith(f"evaluators.{name}") else f"evaluators.{name}: {text}"
                                    for name, text in messages))
    problem, warning = metric_problem(cfg, reported_metrics(evaluators), sweep)
    if problem:
        raise ConfigError(problem)
    if warning:
        logger.warning("%s", warning)
    return evaluators


def dry_run(cfg: DictConfig, ctx: DistContext, tokenizer, train_data) -> None:
    num_params = count_parameters(cfg, tokenizer)
    if not ctx.is_main:
        return
    print(OmegaConf.to_yaml(cfg, resolve=True))
    print(f"parameters: {num_params:,}")
    if train_data is None:
        print(f"evaluation only: {', '.join(cfg.evaluators) or 'no evaluators'}")
        return
    data_parallel = sequence_parallel.ParallelLayout.of(ctx.rank, ctx.world_size, cfg.sequence_parallel_size).dp_size
    micro_per_epoch, total_steps = optimizer_steps(len(train_data), cfg, data_parallel)
    engine = engine_of(cfg)
    memory = engine.memory_estimate(num_params, cfg, ctx.world_size)
    print(f"samples: {len(train_data)}; micro-batches per rank per epoch: {micro_per_epoch}; "
          f"optimizer steps: {total_steps}")
    for line in getattr(train_data, "mixture_lines", lambda: [])():
        print(line)
    print(f"per-GPU memory estimate ({engine.describe(cfg)}, {cfg.precision}, world {ctx.world_size}, "
          f"activations excluded): " + ", ".join(f"{k} {human_bytes(v)}" for k, v in memory.items())
          + f", total {human_bytes(sum(memory.values()))}")


def evaluate_checkpoints(cfg: DictConfig, ctx: DistContext, tokenizer, evaluators: dict) -> None:
    """do_train=false: evaluate every `output_dir/<eval_sub_path>` in step order (or `model_name_or_path`
    when there is none), track the best, and write a summary table, CSV and plot of the metric vs step."""
    output_dir = Path(cfg.output_dir)
    targets = [(ckpt.step_of(p), p) for p in ckpt.list_checkpoints(output_dir, cfg.eval_sub_path)]
    targets = targets or [(0, Path(cfg.model_name_or_path))]
    metric, _ = match_metric(cfg.prediction_cfg.metric, reported_metrics(evaluators))  # none: no best is tracked (build_evaluators warned)
    best = BestTracker(output_dir, metric, cfg.prediction_cfg.measure) if metric else None
    loss_settings = LossSettings(cfg.loss_impl, cfg.loss_chunk_tokens)
    rows = []
    for step, path in targets:
        model = instantiate(cfg.model, name_or_path=str(path), tokenizer=tokenizer).to(ctx.device).eval()
        metrics = run_evaluators(evaluators, model, tokenizer, output_dir / "eval" / path.name, str(path), loss_settings)
        rows.append((step, metrics))
        if best and best.update(metrics, step, path.name) and ctx.is_main:
            best.write()
        del model
    if ctx.is_main:
        paths = write_summary(rows, output_dir, metric=metric)
        print(f"evaluated {len(rows)} model(s); summary in {', '.join(map(str, paths.values()))}; "
              f"best: {best.record if best else f'none (prediction_cfg.metric={cfg.prediction_cfg.metric!r} is not reported)'}")


def run(cfg: DictConfig, keep_process_group: bool = False) -> None:
    """Validate, join the process group, do the job, then tear down in order on every rank, after an error too
    (general_util.dist.teardown: engine, data workers, barrier, process group), so each rank exits cleanly.
    `keep_process_group`: for callers that run several jobs in one process (tests/trainer_runs.py)."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    ctx = init_distributed(cfg.dist_timeout_s)
    built: dict = {}  # what teardown must release: run_job puts its trainer (engine, data workers) and lock here
    finished = False
    try:
        run_job(cfg, ctx, built)
        finished = True
    except Exception as error:  # noqa: BLE001 - re-raised unless it is one of the two below
        # a write the disk refused outside a save (logs, TensorBoard, trackers, data report, lock): one line, exit 2
        failure = write_failure(error, Path(cfg.output_dir)) if find_user_error(error) is None else None
        if failure is not None:
            raise failure from error
        # a peer that died is named in one line (general_util.dist.lost_peer_error)
        lost = lost_peer_error(error) if isinstance(error, RuntimeError) else None
        if lost is None:
            raise
        logger.error("%s", lost)
        raise lost from error
    finally:
        trainer = built.get("trainer")
        teardown(getattr(trainer, "engine", None), trainer.close_data if trainer else None, clean=finished,
                 keep_process_group=keep_process_group)
        if built.get("lock"):
            built["lock"].release()


def claim_output_dir(cfg: DictConfig, built: dict) -> Path | None:
    """Global rank 0 locks output_dir for this job (training/run_folder.py). A training run then resolves
    `resume` (once for the run, on every rank, under the lock) and, when it starts at step 0, rank 0 refuses a
    folder that holds another run (or empties it: overwrite_output_dir=true); every rank raises the same
    refusal, so all stop together. Returns the checkpoint to continue (None: none)."""
    output_dir = Path(cfg.output_dir)

    def lock() -> None:
        built["lock"] = OutputDirLock(output_dir)
        try:
            built["lock"].acquire()
        except OSError as error:  # the lock cannot be written: every rank stops with the same line
            failure = write_failure(error, output_dir)
            if failure is None:
                raise
            raise failure from error

    def fresh_start(resume_from: Path | None) -> None:
        if cfg.overwrite_output_dir and resume_from is not None and output_dir.resolve() in resume_from.resolve().parents:
            raise OutputDirError(f"resume={cfg.resume} lies in output_dir={output_dir}, which overwrite_output_dir=true "
                                 f"would empty; start from a copy elsewhere or pick a new output_dir")
        check_fresh_start(output_dir, cfg.overwrite_output_dir)

    decided_by_rank0(lock)
    if not cfg.do_train:
        return None  # the evaluation sweep reads the run's checkpoints; it only needs the folder to itself
    resume_from = ckpt.resolve_resume(cfg.resume, output_dir)
    if resume_from is None or cfg.resume_mode != "exact":  # else it continues that run
        decided_by_rank0(lambda: fresh_start(resume_from))
    return resume_from


def run_job(cfg: DictConfig, ctx: DistContext, built: dict) -> None:
    output_dir = Path(cfg.output_dir)
    setup_logging(output_dir, ctx)
    if cfg.not_reproduced and ctx.is_main:  # an original config name that runs without its original's model class or data
        logger.warning("not reproduced from the original config: %s", cfg.not_reproduced)
    # do_preprocess and dry_run write nothing in output_dir but their logs
    resume_from = None if cfg.do_preprocess or cfg.dry_run else claim_output_dir(cfg, built)
    set_seed(cfg.seed)
    tokenizer = instantiate(cfg.tokenizer)
    train_data = instantiate(cfg.train_dataset, tokenizer=tokenizer) if cfg.do_train or cfg.do_preprocess else None
    if cfg.do_preprocess:
        logger.info("training data ready: %d samples", len(train_data))
        return
    if cfg.dry_run:
        return dry_run(cfg, ctx, tokenizer, train_data)
    if not cfg.do_train:
        return evaluate_checkpoints(cfg, ctx, tokenizer, build_evaluators(cfg, sweep=True))
    trainer = built["trainer"] = build_trainer(cfg, ctx, tokenizer=tokenizer, train_data=train_data,
                                               resume_from=resume_from)
    trainer.run()
    if ctx.is_main:
        print(f"done: {trainer.step} optimizer steps; checkpoints in {output_dir.resolve()}, "
              f"TensorBoard logs in {(output_dir / 'tensorboard').resolve()}, per-rank logs in {(output_dir / 'logs').resolve()}")


@hydra.main(config_path="conf", config_name=None, version_base="1.3")
def main(cfg: DictConfig) -> None:
    """User errors (bad config, data, checkpoint; also when Hydra's instantiate wraps them) print one line
    and exit 2 (a lost peer rank: 1); HYDRA_FULL_ERROR=1 shows the whole traceback instead."""
    try:
        run(cfg)
    except Exception as error:  # noqa: BLE001 - anything that is not the user's to fix is re-raised
        if find_user_error(error) is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(one_line(error), file=sys.stderr)
        sys.exit(getattr(find_user_error(error), "exit_code", 2))


if __name__ == "__main__":
    sys.argv = consume_local_rank_arg(sys.argv)  # the deepspeed launcher's --local_rank=N; Hydra would reject it
    sys.argv = convert_legacy_arguments(sys.argv)  # the original trainer's --key=value habit
    try:
        main()
    except SystemExit as stop:  # sys.exit(2) for user errors; Hydra's own exit 1 after a traceback
        exit_process(stop.code if isinstance(stop.code, int) else 1)
    exit_process(0)  # `run` closed everything; skip the exit-time destructors (general_util.dist.exit_process)
