"""Mean ± standard deviation of the final metrics of several runs (one per seed).

    python -m post_processors.seed_summary OUT_DIR RUN_DIR [RUN_DIR ...]

Reads `<run>/eval_results.json` (written by the trainer after its final evaluation) and writes
`OUT_DIR/seed_summary.md` and `.csv`: one row per metric, one column per seed, then mean and sample std.
"""
import csv
import json
import statistics
import sys
from pathlib import Path


def summarize(run_dirs: list[Path]) -> tuple[list[str], list[list]]:
    results = {}
    for run in run_dirs:
        path = run / "eval_results.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing (did the run finish with do_eval=true?)")
        results[run.name] = json.loads(path.read_text())
    metrics = sorted({k for r in results.values() for k in r if k != "step"})
    header = ["metric", *results, "mean", "std"]
    rows = []
    for metric in metrics:
        values = [results[run].get(metric) for run in results]
        present = [v for v in values if v is not None]
        std = statistics.stdev(present) if len(present) > 1 else 0.0
        rows.append([metric, *values, statistics.fmean(present), std])
    return header, rows


def write(out_dir: Path, header: list[str], rows: list[list]) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "seed_summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| " + " | ".join(header[:-2] + ["mean ± std"]) + " |", "|" + "---|" * (len(header) - 1)]
    lines += ["| " + " | ".join([row[0], *map(fmt, row[1:-2]), f"{row[-2]:.4f} ± {row[-1]:.4f}"]) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    (out_dir / "seed_summary.md").write_text(table)
    return table


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    header, rows = summarize([Path(p) for p in argv[1:]])
    print(write(Path(argv[0]), header, rows))


if __name__ == "__main__":
    main(sys.argv[1:])
