"""Peak memory of make_delta / apply_delta against the largest shard and against `from_pretrained`.

    python -m bench.delta_memory            # a 1.07 GB fp16 LLaMA in 4 shards of ≤ 300 MB (~4 minutes)
    python -m bench.delta_memory --quick    # a 65 MB one in 4 shards (CI: tests/test_bench_delta_memory.py)

A random base and a slightly changed target are written tensor by tensor as safetensors shards (never
a whole model in memory), and, in the layout of published deltas and original LLaMA conversions
(`pytorch_model-0000i-of-0000n.bin` shards saved by torch.save, with their index), a PandaLLM-flavour
delta of the two (target − base; embed_tokens / lm_head as they are) and the base once more. Each step
then runs in its own subprocess, whose peak RSS is the kernel's high-water mark (ru_maxrss from
`wait4`, taken by a minimal launcher process): the baseline (a process importing the tools and doing
nothing), make_delta, apply_delta, apply_delta --legacy-delta panda of the `.bin` delta onto the
safetensors base and onto the `.bin` base, and loading both models with `from_pretrained` and reading
every weight once (lazily loaded weights cost nothing until read). The goal is a peak of at most 1.5 ×
the largest input shard above the baseline. Prints JSON on stdout and a table on stderr.
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

from models.delta import VOCAB_TENSORS
from models.weights_io import (BIN_INDEX, ShardedWriter, TensorSpec, copy_side_files, format_size, parse_size,
                               plan_shards)

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "models" / "tiny_llama"
SIZES = {
    "full": {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 8,
             "max_shard_size": "300MB"},
    # Shards large enough that the tools' fixed 10-25 MB above the baseline (first torch ops, library pages,
    # blocks) leave the goal meaningful; small tensors, so it stays fast.
    "quick": {"vocab_size": 1000, "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 40,
              "max_shard_size": "20MB"},
}
LEGACY_STEPS = ("apply_delta_legacy_panda", "apply_delta_legacy_panda_bin_base")
TOOL_STEPS = ("make_delta", "apply_delta", *LEGACY_STEPS)  # the steps the goal is for
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


class BinShardWriter:
    """`pytorch_model-0000i-of-0000n.bin` shards saved by torch.save, with `pytorch_model.bin.index.json`, as
    transformers 4.28's `save_pretrained` wrote them; holds one shard's tensors until it is saved."""

    def __init__(self, folder: Path, specs: dict[str, TensorSpec], max_shard_bytes: int):
        self.folder, self.specs = folder, specs
        self.shards = plan_shards(specs, max_shard_bytes)
        count = len(self.shards)
        self.files = [folder / f"pytorch_model-{i:05d}-of-{count:05d}.bin" for i in range(1, count + 1)]
        self._pending, self._saved = {}, 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._pending[name] = tensor
        if len(self._pending) == len(self.shards[self._saved]):
            torch.save(self._pending, self.files[self._saved])
            self._pending, self._saved = {}, self._saved + 1

    def close(self) -> list[Path]:
        weight_map = {name: self.files[i].name for i, names in enumerate(self.shards) for name in names}
        index = {"metadata": {"total_size": sum(spec.nbytes for spec in self.specs.values())}, "weight_map": weight_map}
        (self.folder / BIN_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return self.files


def write_models(folders: dict[str, Path], config: dict, max_shard_bytes: int) -> dict[str, list[Path]]:
    """A random fp16 `base` and a `target` 0.1% of the weight scale away (safetensors shards), the base again as
    `.bin` shards (`base_bin`) and PandaLLM's delta of the two (`panda_delta`, `.bin`: target − base, embed_tokens
    and lm_head as they are), written tensor by tensor, each with config and tokenizer; returns their shards."""
    specs = llama_specs(config, torch.float16)
    kinds = {"base": ShardedWriter, "target": ShardedWriter, "base_bin": BinShardWriter, "panda_delta": BinShardWriter}
    writers = {key: kind(folders[key], specs, max_shard_bytes) for key, kind in kinds.items()}
    generator = torch.Generator().manual_seed(0)
    for name, spec in specs.items():
        weights = (torch.ones(spec.shape) if name.endswith("norm.weight")
                   else 0.02 * torch.randn(spec.shape, generator=generator))
        base = weights.half()
        target = (weights + 2e-5 * torch.randn(spec.shape, generator=generator)).half()
        writers["base"].add(name, [base])
        writers["target"].add(name, [target])
        writers["base_bin"].add(name, base)
        writers["panda_delta"].add(name, target if name.endswith(VOCAB_TENSORS) else target - base)
    shards = {key: writer.close() for key, writer in writers.items()}
    for key in writers:
        copy_side_files(TOKENIZER, folders[key])
        (folders[key] / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return shards


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
    folders = {key: workdir / key for key in ("base", "target", "base_bin", "panda_delta")}
    for folder in folders.values():
        folder.mkdir()
    shards = write_models(folders, config, parse_size(max_shard_size))
    base, target, delta = folders["base"], folders["target"], workdir / "delta"
    python = sys.executable

    def apply(base_folder: Path, delta_folder: Path, output: str, *extra: str) -> list[str]:
        return [python, "apply_delta.py", "--base-model-path", str(base_folder), "--delta-path", str(delta_folder),
                "--target-model-path", str(workdir / output), "--max-shard-size", max_shard_size, *extra]

    steps = {
        "baseline": [python, "-c", "import make_delta, apply_delta"],
        "make_delta": [python, "make_delta.py", "--base-model-path", str(base), "--target-model-path", str(target),
                       "--delta-path", str(delta), "--max-shard-size", max_shard_size],
        "apply_delta": apply(base, delta, "restored"),
        "apply_delta_legacy_panda": apply(base, folders["panda_delta"], "restored_panda", "--legacy-delta", "panda"),
        "apply_delta_legacy_panda_bin_base": apply(folders["base_bin"], folders["panda_delta"], "restored_panda_bin",
                                                   "--legacy-delta", "panda"),
        # Both models loaded and every weight read once, as a delta made through from_pretrained would.
        "from_pretrained_both": [python, "-c", ("import sys; from transformers import AutoModelForCausalLM as M; "
                                                "models = [M.from_pretrained(p, dtype='auto') for p in sys.argv[1:]]; "
                                                "[p.sum() for m in models for p in m.parameters()]"),
                                 str(base), str(target)],
    }
    results = {name: measure(command) for name, command in steps.items()}
    largest = max(path.stat().st_size for files in shards.values() for path in files)
    baseline = results["baseline"]["peak_rss_bytes"]
    for name in (*TOOL_STEPS, "from_pretrained_both"):
        over = results[name]["peak_rss_bytes"] - baseline
        results[name]["over_baseline_in_largest_shards"] = round(over / largest, 3)
    goal = baseline + GOAL_SHARDS * largest
    return {
        "mode": mode, "model_bytes": sum(path.stat().st_size for path in shards["base"]),
        "num_shards": len(shards["base"]), "largest_shard_bytes": largest, "max_shard_size": max_shard_size,
        "baseline_rss_bytes": baseline, "goal_rss_bytes": int(goal), **results,
        "within_goal": all(results[name]["peak_rss_bytes"] <= goal for name in TOOL_STEPS),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()}, "date": date.today().isoformat(),
    }


def table(report: dict) -> str:
    lines = [(f"model {format_size(report['model_bytes'])} in {report['num_shards']} shards, largest "
              f"{format_size(report['largest_shard_bytes'])}; baseline RSS {format_size(report['baseline_rss_bytes'])}; "
              f"goal ≤ {format_size(report['goal_rss_bytes'])}"),
             f"{'step':<36}{'peak RSS':>12}{'(peak-baseline)/shard':>24}{'seconds':>10}"]
    for name in (*TOOL_STEPS, "from_pretrained_both"):
        row = report[name]
        lines.append(f"{name:<36}{format_size(row['peak_rss_bytes']):>12}"
                     f"{row['over_baseline_in_largest_shards']:>24.2f}{row['seconds']:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a model of 65 MB (CI)")
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
