"""A run's evaluation metrics over training steps: a markdown table, a CSV file and a PNG plot of one
metric against the step (matplotlib's Agg canvas: no display, no global backend switched)."""
import csv
from pathlib import Path
from typing import TYPE_CHECKING

from general_util.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_summary(rows: list[tuple[int, dict[str, float]]], output_dir: str | Path, metric: str | None,
                  columns: list[str] | None = None, name: str = "eval_summary") -> dict[str, Path]:
    """`<name>.md`, `<name>.csv` (one row per step, in step order; `columns` or every metric seen) and
    `<name>.png` (`metric` vs step; none when `metric` is None). A metric a row lacks is left empty. Returns the
    paths by suffix."""
    rows = sorted(rows, key=lambda row: row[0])
    seen = sorted({key for _, metrics in rows for key in metrics})
    if metric is not None and metric not in seen:
        raise ConfigError(f"metric {metric!r} is in none of the {len(rows)} rows; they hold {seen}")
    columns = list(columns) if columns is not None else seen
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": output_dir / f"{name}.md", "csv": output_dir / f"{name}.csv"}
    paths["md"].write_text(markdown_table(rows, columns))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *columns])
        writer.writerows([step, *(metrics.get(c, "") for c in columns)] for step, metrics in rows)
    if metric is not None:
        paths["png"] = output_dir / f"{name}.png"
        plot_metric(rows, metric).savefig(paths["png"], dpi=100)
    return paths


def markdown_table(rows: list[tuple[int, dict[str, float]]], columns: list[str]) -> str:
    def cell(value) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| step | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {step} | " + " | ".join(cell(metrics.get(c)) for c in columns) + " |" for step, metrics in rows]
    return "\n".join(lines) + "\n"


def plot_metric(rows: list[tuple[int, dict[str, float]]], metric: str) -> "Figure":
    # imported here: matplotlib costs every trainer process ~1 s of start-up, and only a sweep plots
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    points = [(step, metrics[metric]) for step, metrics in sorted(rows, key=lambda row: row[0]) if metric in metrics]
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([s for s, _ in points], [v for _, v in points], marker="o")
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} vs step")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return figure
