"""Peak memory of make_delta / apply_delta against the largest shard and against `from_pretrained`.

    python -m bench.delta_memory            # a 1.07 GB fp16 LLaMA in 4 shards of ≤ 300 MB (~2 minutes)
    python -m bench.delta_memory --quick    # a 2 MB one in 4 shards (CI: tests/test_bench_delta_memory.py)

A random base and a slightly changed target are written tensor by tensor (never a whole model in
memory). Each step then runs in its own subprocess, whose peak RSS is the kernel's high-water mark
(ru_maxrss from `wait4`, taken by a minimal launcher process): the baseline (a process importing the
tools and doing nothing), make_delta, apply_delta, and loading both models with `from_pretrained`
and reading every weight once (lazily loaded weights cost nothing until read). The goal is a peak of
at most 1.5 × the largest shard above the baseline. Prints JSON on stdout and a table on stderr.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from models.weights_io import ShardedWriter, TensorSpec, copy_side_files, format_size, parse_size

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "models" / "tiny_llama"
SIZES = {
    "full": {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 8,
             "max_shard_size": "300MB"},
    "quick": {"vocab_size": 1000, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
              "max_shard_size": "600KB"},
}
GOAL_SHARDS = 1.5  # peak RSS above the baseline, in largest shards
# Runs argv[2:] and writes its peak RSS and exit code to argv[1]. A child's ru_maxrss starts at the
# high-water mark of the process it was spawned from, so the spawner must be this small, not the bench.
LAUNCHER = ("import os, subprocess, sys\n"
            "process = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(process.pid, 0)\n"
            "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss * 1024} {os.waitstatus_to_exitcode(status)}')\n")


def llama_config(vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int) -> dict:
    heads = max(1, hidden_size // 64)
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
            "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2,
            "tie_word_embeddings": False, "dtype": "float16"}


def llama_specs(config: dict, dtype: torch.dtype) -> dict[str, TensorSpec]:
    """LLaMA's tensor names and shapes, in the order `save_pretrained` writes them."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        shapes[layer + "input_layernorm.weight"] = (hidden,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[layer + "post_attention_layernorm.weight"] = (hidden,)
        shapes[layer + "mlp.gate_proj.weight"] = (inner, hidden)
        shapes[layer + "mlp.up_proj.weight"] = (inner, hidden)
        shapes[layer + "mlp.down_proj.weight"] = (hidden, inner)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    return {name: TensorSpec(shape, dtype) for name, shape in shapes.items()}


def write_models(base: Path, target: Path, config: dict, max_shard_bytes: int) -> list[Path]:
    """A random fp16 base and a target 0.1% of the weight scale away, written as shards tensor by tensor,
    with config and tokenizer; returns the base's shard files."""
    specs = llama_specs(config, torch.float16)
    writers = {folder: ShardedWriter(folder, specs, max_shard_bytes) for folder in (base, target)}
    generator = torch.Generator().manual_seed(0)
    for name, spec in specs.items():
        weights = (torch.ones(spec.shape) if name.endswith("norm.weight")
                   else 0.02 * torch.randn(spec.shape, generator=generator))
        writers[base].add(name, [weights.half()])
        writers[target].add(name, [(weights + 2e-5 * torch.randn(spec.shape, generator=generator)).half()])
    shards = {folder: writer.close() for folder, writer in writers.items()}
    for folder in (base, target):
        copy_side_files(TOKENIZER, folder)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return shards[base]


def measure(command: list[str]) -> dict:
    """Run `command` in the repository; its peak RSS (bytes) and wall time (seconds)."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        result, log = Path(scratch) / "peak", Path(scratch) / "log"
        with open(log, "wb") as output:
            subprocess.run([sys.executable, "-c", LAUNCHER, str(result), *command], cwd=REPO, stdout=output,
                           stderr=subprocess.STDOUT, check=True)
        peak, returncode = map(int, result.read_text().split())
        if returncode:
            raise RuntimeError(f"{' '.join(command)} exited with {returncode}:\n{log.read_text()[-3000:]}")
    return {"peak_rss_bytes": peak, "seconds": round(time.perf_counter() - started, 2)}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run(workdir: Path, mode: str) -> dict:
    size = dict(SIZES[mode])
    max_shard_size = size.pop("max_shard_size")
    config = llama_config(**size)
    base, target, delta, restored = (workdir / name for name in ("base", "target", "delta", "restored"))
    base.mkdir()
    target.mkdir()
    shards = write_models(base, target, config, parse_size(max_shard_size))
    python = sys.executable
    steps = {
        "baseline": [python, "-c", "import make_delta, apply_delta"],
        "make_delta": [python, "make_delta.py", "--base-model-path", str(base), "--target-model-path", str(target),
                       "--delta-path", str(delta), "--max-shard-size", max_shard_size],
        "apply_delta": [python, "apply_delta.py", "--base-model-path", str(base), "--delta-path", str(delta),
                        "--target-model-path", str(restored), "--max-shard-size", max_shard_size],
        # Both models loaded and every weight read once, as a delta made through from_pretrained would.
        "from_pretrained_both": [python, "-c", ("import sys; from transformers import AutoModelForCausalLM as M; "
                                                "models = [M.from_pretrained(p, dtype='auto') for p in sys.argv[1:]]; "
                                                "[p.sum() for m in models for p in m.parameters()]"),
                                 str(base), str(target)],
    }
    results = {name: measure(command) for name, command in steps.items()}
    largest = max(path.stat().st_size for path in shards)
    baseline = results["baseline"]["peak_rss_bytes"]
    for name in ("make_delta", "apply_delta", "from_pretrained_both"):
        over = results[name]["peak_rss_bytes"] - baseline
        results[name]["over_baseline_in_largest_shards"] = round(over / largest, 3)
    goal = baseline + GOAL_SHARDS * largest
    return {
        "mode": mode, "model_bytes": sum(path.stat().st_size for path in shards), "num_shards": len(shards),
        "largest_shard_bytes": largest, "max_shard_size": max_shard_size, "baseline_rss_bytes": baseline,
        "goal_rss_bytes": int(goal), **results,
        "within_goal": all(results[name]["peak_rss_bytes"] <= goal for name in ("make_delta", "apply_delta")),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()}, "date": date.today().isoformat(),
    }


def table(report: dict) -> str:
    lines = [(f"model {format_size(report['model_bytes'])} in {report['num_shards']} shards, largest "
              f"{format_size(report['largest_shard_bytes'])}; baseline RSS {format_size(report['baseline_rss_bytes'])}; "
              f"goal ≤ {format_size(report['goal_rss_bytes'])}"),
             f"{'step':<22}{'peak RSS':>12}{'(peak-baseline)/shard':>24}{'seconds':>10}"]
    for name in ("make_delta", "apply_delta", "from_pretrained_both"):
        row = report[name]
        lines.append(f"{name:<22}{format_size(row['peak_rss_bytes']):>12}"
                     f"{row['over_baseline_in_largest_shards']:>24.2f}{row['seconds']:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a model of a few MB (CI)")
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary folder)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=False)
        report = run(args.workdir, mode)
    else:
        with tempfile.TemporaryDirectory(prefix="delta_memory_") as workdir:
            report = run(Path(workdir), mode)
    print(json.dumps(report, indent=2))
    print(table(report), file=sys.stderr)


if __name__ == "__main__":
    main()
