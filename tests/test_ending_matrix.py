"""Every way a run ends, with the trackers on, on 1 and 2 ranks: the exit code is the documented one, a failure
prints one `error:` line per rank (no traceback, no Hydra block), nothing partial is left (`.tmp-` folders,
`*.tmp` files, a loose `zero_to_fp32.py`, a stale lock after the job), every tracker holds every logged step
exactly once with its run closed or resumable, and the newest complete checkpoint is the resume point.

The faults strike at exact points through the trainer's test-only hook (LLAMA_TRAINER_FAULT, general_util/faults.py):
no timing. The ranks are forked (tests/forked_ranks.py).

The design: a scenario is a chain of runs on one output folder (a failure, then the resume that continues it, or
a completed run, then the evaluation sweep over its checkpoints), so each run is both an ending and the set-up of
the next. The endings x report_to x ranks product is covered, not multiplied out: every scenario runs on 1 and on
2 ranks, and the report_to setting varies so that each of tensorboard, wandb (offline), mlflow (file store) and
all three together appears with both rank counts, and every ending is met by each tracker's store (all three
logged at once in one run and each checked on its own: `report_to` lists more than one). The table of every
run (ending, trackers, ranks -> per-rank exit codes, last line, steps per tracker, leftovers) is printed at the
end of each module (this one: 1 rank; tests/test_ending_matrix_two_ranks.py: 2 ranks, so that pytest-xdist's two
workers run the halves side by side) and written into the folder $ENDING_MATRIX_TABLE when set.
"""
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_trackers import mlflow_history, wandb_history, wandb_records
from tests.trainer_runs import read_scalars, run_trainer
from training.checkpoints import TRAINER_STATE, list_checkpoints, resolve_resume

pytestmark = pytest.mark.slow

STEPS = 6
BASE = [f"max_steps={STEPS}", "save_steps=3", "logging_steps=1", "per_gpu_train_batch_size=4", "eval_steps=4",
        "tracking.wandb_mode=offline", "tracking.run_name=matrix"]
NO_EVAL = ["do_eval=false", "evaluate_during_training=false"]
ALL = "tensorboard,wandb,mlflow"
# the sweep: an lm-eval task and the base config's metric ('loss'), which it does not report
SWEEP = (("conf", "eval_only"), ["model_name_or_path=models/tiny_llama", "precision=fp32", "+eval@evaluators.lm=lm_eval",
                                 "evaluators.lm.tasks=[tests/fixtures/lm_eval/logiqa2_local.yaml]"])
EXPECTED_TOP = re.compile(r"checkpoint-\d+|logs|tensorboard|wandb|mlruns|data_train\.json|eval|eval_results\.json|"
                          r"eval_summary\.(md|csv|png)|best_checkpoint\.json")


@dataclass
class Leg:
    """One run of a scenario and what it must end with."""
    ending: str
    fault: str | None = None          # LLAMA_TRAINER_FAULT
    overrides: list[str] = field(default_factory=list)
    codes: tuple[int, ...] = (0,)     # per rank, 1 rank: (code,); 2 ranks: (rank 0, rank 1) unless codes2 says
    codes2: tuple[int, int] | None = None
    errors: bool = False              # every rank that exits by itself prints one error line
    error: str | None = None          # a pattern the failing rank's line must match
    resume_point: int | None = None   # the newest complete checkpoint's step afterwards (None: no checkpoint)
    sweep: bool = False


COMPLETED = Leg("completed, final eval after the last save", resume_point=6)
SWEPT = Leg("eval-only sweep (metric not reported: warning)", sweep=True, resume_point=6)
KILLED = Leg("rank killed", fault="kill@step=4@rank={last}", codes=(-9,), codes2=(1, -9), errors=True,
             error=r"rank 1 \(pid \d+ on \S+\) is gone", resume_point=3)
RESUMED = Leg("resumed, completed without final eval", overrides=["resume=auto"] + NO_EVAL, resume_point=6)
RESUMED_EVAL = Leg("resumed, completed with final eval", overrides=["resume=auto"], resume_point=6)
SIGTERM = Leg("SIGTERM", fault="sigterm@step=2", resume_point=3)
SAVE_COPY = Leg("disk full during a save (DeepSpeed's own copy)", fault="enospc@copy=6", codes=(2,), errors=True,
                error=r"could not save checkpoint \S+/checkpoint-6 \(rank 0: No space left on device \(injected by "
                      r"LLAMA_TRAINER_FAULT\): \S+/\.tmp-checkpoint-6/zero_to_fp32\.py; [\d.]+ [MG]iB free on \S+\); the "
                      r"partial \.tmp-checkpoint-6 was removed and checkpoint-3 stays the resume point", resume_point=3)
SAVE_QUOTA = Leg("disk full during a save (quota on rank 1)", fault="edquot@save=6@rank={last}", codes2=(2, 2),
                 errors=True, error=r"could not save checkpoint \S+/checkpoint-6 \(rank 1: Disk quota exceeded",
                 resume_point=3)
LOG = Leg("disk full outside a save: rank log", fault="enospc@log=4", codes=(2,), errors=True,
          error=r"could not write \S+/logs/rank0\.log \(No space left on device", resume_point=3)
TENSORBOARD = Leg("disk full outside a save: TensorBoard", fault="enospc@tensorboard=5", codes=(2,), errors=True,
                  error=r"could not write \S+/tensorboard \(No space left on device", resume_point=3)
TRACKER = Leg("disk full outside a save: tracker files", fault="enospc@tracker=5", codes2=(2, 1), errors=True,
              error=r"could not write \S+/wandb \(No space left on device", resume_point=3)
DATA_REPORT = Leg("disk full outside a save: data_train.json", fault="enospc@data_stats=0", codes=(2,), errors=True,
                  error=r"could not write \S+/data_train\.json \(No space left on device[^;]*; [\d.]+ [MG]iB free on \S+\); no "
                        r"checkpoint stays the resume point")
LOCK = Leg("disk full outside a save: the lock", fault="enospc@lock=0", codes2=(2, 2), errors=True,
           error=r"could not write \S+/\.trainer\.lock \(No space left on device")
PREFLIGHT = Leg("user error in preflight", overrides=["prediction_cfg.metric=acc"], codes=(2,), codes2=(2, 2),
                errors=True, error=r"prediction_cfg\.metric='acc' matches nothing in \['dev_loss/loss', "
                                   r"'dev_loss/perplexity', 'dev_loss/tokens'\]; set prediction_cfg\.metric to one of them")
# (ranks, report_to, the chain of runs on one output folder). Each ending on 1 and 2 ranks; each report_to setting
# (every tracker alone, all three) on 1 and 2 ranks; a run with several trackers is checked in each of them.
CASES = [
    (1, "tensorboard,wandb", [COMPLETED, SWEPT]),  # the W&B command (final eval after the last save)
    (1, ALL, [KILLED, RESUMED]),
    (1, "mlflow", [SIGTERM]),
    (1, "tensorboard", [SAVE_COPY, RESUMED]),
    (1, "tensorboard,mlflow", [LOG, RESUMED]),
    (1, "tensorboard", [TENSORBOARD]),
    (1, "mlflow", [DATA_REPORT]),
    (1, "wandb", [PREFLIGHT]),
    (2, ALL, [COMPLETED, SWEPT]),
    (2, "mlflow", [KILLED, RESUMED]),
    (2, "wandb", [SIGTERM, RESUMED_EVAL]),
    (2, ALL, [SAVE_QUOTA]),
    (2, "wandb,mlflow", [TRACKER]),
    (2, "tensorboard", [LOCK]),
    (2, ALL, [PREFLIGHT]),
]
TABLE: list[str] = []


def tracker_steps(out: Path, report_to: list[str]) -> dict[str, list[int]]:
    """The steps of train/loss in each store (as each shows them: TensorBoard's purge, W&B's rewind applied)."""
    steps = {}
    if "tensorboard" in report_to:
        steps["tensorboard"] = [s for s, _ in read_scalars(out).get("train/loss", [])] if (out / "tensorboard").exists() else []
    if "wandb" in report_to:
        steps["wandb"] = [s for s, _ in wandb_history(out, "train/loss")[2]]
    if "mlflow" in report_to:
        steps["mlflow"] = [s for s, _ in mlflow_history(out, "train/loss")[1]] if (out / "mlruns").exists() else []
    return steps


def tracker_runs_closed(out: Path, report_to: list[str]) -> dict[str, bool]:
    """Whether each W&B / MLflow run was ended (W&B: its last offline run file holds the exit record; MLflow: the
    run's status is FINISHED)."""
    closed = {}
    if "wandb" in report_to and list(out.glob("wandb/offline-run-*")):
        last = sorted(out.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)[-1]
        closed["wandb"] = any(r.WhichOneof("record_type") == "exit" for r in wandb_records(last))
    if "mlflow" in report_to and (out / "mlruns").exists():
        closed["mlflow"] = mlflow_history(out, "train/loss")[0].info.status == "FINISHED"
    return closed


def leftovers(out: Path) -> list[str]:
    """What a run must not leave: partial folders and files, a loose recovery script, anything unexpected at the
    top of output_dir."""
    if not out.exists():
        return []
    partial = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]
    unexpected = [p.name for p in out.iterdir() if not EXPECTED_TOP.fullmatch(p.name)]
    return sorted(set(partial + unexpected))


def error_lines(stderr: str) -> list[str]:
    return re.findall(r"error: [^\n]*", stderr)


def write_table(rows: list[str], nproc: int) -> None:
    """Print this module's part of the table and, when $ENDING_MATRIX_TABLE names a folder, write it there as
    ending_matrix_<n>rank.md."""
    header = ["| ending | report_to | ranks | exit codes | last line | train/loss steps per tracker | leftovers |",
              "|---|---|---|---|---|---|---|"]
    text = "\n".join(header + rows) + "\n"
    print("\n" + text)
    if os.environ.get("ENDING_MATRIX_TABLE"):
        folder = Path(os.environ["ENDING_MATRIX_TABLE"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ending_matrix_{nproc}rank.md").write_text(text)


@pytest.fixture(scope="module", autouse=True)
def matrix_table():
    yield
    write_table(TABLE, 1)


def compact(steps: list[int]) -> str:
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}"
    return ",".join(map(str, steps))


KEYS = {id(leg): name.lower() for name, leg in globals().items() if isinstance(leg, Leg)}


def cases(nproc: int) -> dict:
    """pytest.mark.parametrize's arguments for the cases of `nproc` ranks."""
    chosen = [case for case in CASES if case[0] == nproc]
    return {"argnames": "nproc,report_to,legs", "argvalues": chosen,
            "ids": [f"{n}rank-{'+'.join(KEYS[id(leg)] for leg in legs)}-{t.replace(',', '+')}" for n, t, legs in chosen]}


@pytest.mark.parametrize(**cases(1))
def test_ending(tmp_path, nproc, report_to, legs):
    run_case(tmp_path, nproc, report_to, legs, TABLE)


def run_case(tmp_path, nproc: int, report_to: str, legs: list[Leg], table: list[str]) -> None:
    """Run the chain `legs` on one output folder and check each run's ending; a row per run into `table`."""
    missing = [name for name in ("wandb", "mlflow", "lm_eval") if importlib.util.find_spec(name) is None]
    if missing and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
        pytest.skip(f"{', '.join(missing)} absent: pip install -r requirements-loggers.txt -r requirements-lm-eval.txt")
    report_to = report_to.split(",")
    out = tmp_path / "run"
    for leg in legs:
        env = {"LLAMA_TRAINER_FAULT": leg.fault.format(last=nproc - 1)} if leg.fault else {}
        if leg.sweep:
            config, overrides = SWEEP
        else:
            config, overrides = ("conf/demo", "sft"), BASE + [f"report_to=[{','.join(report_to)}]"] + leg.overrides
        result = run_trainer(out, overrides, nproc=nproc, config=config, check=False, env=env)
        codes = tuple(rank.returncode for rank in result.ranks)
        expected = leg.codes2 if nproc == 2 and leg.codes2 else leg.codes * nproc
        completed = all(code == 0 for code in expected)
        context = f"{leg.ending} ({nproc} rank(s)):\n{result.stderr[-5000:]}"
        assert codes == expected, context
        # one error line per rank that ended by itself; no traceback, no Hydra block
        for rank, code in zip(result.ranks, codes):
            lines = error_lines(rank.stderr)
            assert len(lines) == (1 if leg.errors and code > 0 else 0), context
            assert "Traceback" not in rank.stderr and "HYDRA_FULL_ERROR" not in rank.stderr, context
        if leg.error and max(codes) > 0:
            assert any(re.search(leg.error, line) for line in error_lines(result.stderr)), context
        # the newest complete checkpoint is the resume point, and every checkpoint is complete
        assert all((c / TRAINER_STATE).exists() for c in list_checkpoints(out)), context
        newest = resolve_resume("auto", out) if out.exists() else None
        assert (newest.name if newest else None) == (f"checkpoint-{leg.resume_point}" if leg.resume_point else None), context
        left = leftovers(out)
        if codes and min(codes) < 0:  # SIGKILL: no code of the killed rank ran, its lock stays until the next job
            left = [name for name in left if name != ".trainer.lock"]
        assert left == [], context
        assert not (out / ".trainer.lock").exists() or min(codes) < 0, context
        # every tracker: every logged step exactly once; runs closed, or resumable from the checkpoint
        steps = {} if leg.sweep else tracker_steps(out, report_to)
        for name, logged in steps.items():
            assert logged == sorted(set(logged)), f"{name} holds a step twice: {logged}\n{context}"
            assert logged == list(range(1, len(logged) + 1)), f"{name} misses steps: {logged}\n{context}"
            if leg.resume_point:
                assert len(logged) >= leg.resume_point, f"{name}: {logged}\n{context}"
            if completed:  # every step up to where it stopped, once
                assert logged == list(range(1, leg.resume_point + 1)), f"{name}: {logged}\n{context}"
        closed = {} if leg.sweep else tracker_runs_closed(out, report_to)
        if completed:
            assert all(closed.values()), f"{closed}\n{context}"
        elif newest is not None and closed and not all(closed.values()):
            ids = json.loads((newest / TRAINER_STATE).read_text())["tracker_runs"]
            assert {name for name, done in closed.items() if not done} <= set(ids), f"{closed} {ids}\n{context}"
        if leg.sweep:
            assert (out / "eval_summary.md").exists() and "tracks no best checkpoint" in result.stderr, context
        assert all((c / "zero_to_fp32.py").exists() for c in list_checkpoints(out)), context  # inside, not loose
        last = (error_lines(result.ranks[0].stderr) or error_lines(result.stderr)
                or [line for line in result.ranks[0].stdout.splitlines() if line.startswith(("done:", "evaluated"))]
                or ["(none)"])[-1]
        trackers = "; ".join(f"{name} {compact(logged)}" for name, logged in steps.items()) or "-"
        states = "".join(f" ({name} {'closed' if done else 'resumable'})" for name, done in closed.items())
        table.append(f"| {leg.ending} | {','.join(report_to) if not leg.sweep else '-'} | {nproc} | "
                     f"{','.join(map(str, codes))} | {shorten(last, out)} | {trackers}{states} | {', '.join(left) or 'none'} |")


def shorten(line: str, out: Path) -> str:
    return line.replace(str(out), "<out>").replace("|", "\\|")[:230]
