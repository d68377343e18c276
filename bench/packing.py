"""Packing vs padding: non-pad token fraction and effective (non-pad) tokens per second of training on a
long-tailed SFT length mix (log-normal lengths, clipped to 16..max_len), same model, same batch size in
rows, same number of steps (forward + backward + AdamW step in a plain loop).

Padding: samples in random order, each batch padded to its longest (PaddingCollator). Packing: samples
packed into rows of max_len (data.packing.pack_lengths) with block-causal masks (PackedCollator, sdpa).

    python -m bench.packing            # lengths up to 2048, 2-layer hidden-64 LLaMA (a few minutes on 2 cores)
    python -m bench.packing --quick    # lengths up to 256, few steps: checks the measuring code (CI)
"""
import argparse
import json
import random
import time
from types import SimpleNamespace


import torch

from bench.tokenize_cache import machine
from data.collators import PackedCollator, PaddingCollator
from data.labels import IGNORE_INDEX
from data.packing import pack_lengths
from modules.loss import count_label_tokens, token_loss_sum

SETTINGS = {  # max_len, median length, samples, batch (rows), steps
    "full": (2048, 192, 4000, 8, 12),
    "quick": (256, 48, 400, 4, 3),
}


def sample_lengths(count: int, median: int, max_len: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(max_len, max(16, round(rng.lognormvariate(0.0, 1.0) * median))) for _ in range(count)]


def examples(lengths: list[int], seed: int = 0) -> list[dict]:
    """Random tokens; the first third of each sample is an untrained prompt."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for index, n in enumerate(lengths):
        ids = torch.randint(3, 1024, (n,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * max(1, n // 3) + ids[max(1, n // 3):]
        out.append({"input_ids": ids, "labels": labels, "seq_lens": [n], "index": index})
    return out


def packed_rows(samples: list[dict], max_len: int) -> list[dict]:
    rows = pack_lengths([len(s["input_ids"]) for s in samples], max_len)
    return [{"input_ids": [t for i in row for t in samples[i]["input_ids"]],
             "labels": [t for i in row for t in samples[i]["labels"]],
             "seq_lens": [len(samples[i]["input_ids"]) for i in row], "index": n} for n, row in enumerate(rows)]


def trainer(seed: int = 0):
    """One training step of a fresh 2-layer LLaMA (same seed for every mode) with its own AdamW."""
    from models.tiny import build_model
    model = build_model(vocab_size=1024, max_position_embeddings=2048, seed=seed)
    model.config._attn_implementation = "sdpa"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        loss = token_loss_sum(model(**inputs).logits, batch["labels"]) / count_label_tokens(batch["labels"]).clamp(min=1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def train(batches: dict[str, list[dict]], steps: int) -> dict[str, dict]:
    """`steps` timed steps per mode after one warm-up step; the modes alternate step by step, so a
    shared machine's load changes hit both alike."""
    steppers = {mode: trainer() for mode in batches}
    totals = {mode: {"tokens": 0, "slots": 0, "seconds": 0.0} for mode in batches}
    for index in range(steps + 1):
        for mode, step in steppers.items():
            batch = batches[mode][index]
            started = time.perf_counter()
            step(batch)
            if index:  # index 0 warms up
                totals[mode]["seconds"] += time.perf_counter() - started
                totals[mode]["tokens"] += int(batch["num_tokens"])
                totals[mode]["slots"] += batch["input_ids"].numel()
    return {mode: {"steps": steps, "non_pad_tokens": t["tokens"], "slots": t["slots"],
                   "non_pad_fraction": round(t["tokens"] / t["slots"], 4), "seconds": round(t["seconds"], 3),
                   "effective_tokens_per_second": round(t["tokens"] / t["seconds"])} for mode, t in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short sequences, few steps: checks the code")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steady timings on a shared machine; the ratio is what counts)")
    args = parser.parse_args()
    max_len, median, count, batch_rows, steps = SETTINGS["quick" if args.quick else "full"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    samples = examples(sample_lengths(count, median, max_len))
    random.Random(1).shuffle(samples)
    tokenizer = SimpleNamespace(pad_token_id=0)
    padding = PaddingCollator(tokenizer, pad_to_multiple_of=8)
    packing = PackedCollator(tokenizer, pad_to_multiple_of=8, attn_implementation="sdpa")
    rows = packed_rows(samples, max_len)
    random.Random(2).shuffle(rows)
    chunk = lambda items: [items[i:i + batch_rows] for i in range(0, (steps + 1) * batch_rows, batch_rows)]  # noqa: E731
    results = train({"padding": [padding(b) for b in chunk(samples)], "packing": [packing(b) for b in chunk(rows)]},
                    steps)
    speedup = results["packing"]["effective_tokens_per_second"] / results["padding"]["effective_tokens_per_second"]
    lengths = sorted(len(s["input_ids"]) for s in samples)
    report = {"machine": machine(), "torch_threads": args.threads,
              "model": "LLaMA 2 layers, hidden 64, 4 heads, vocab 1024, fp32, sdpa",
              "max_len": max_len, "batch_rows": batch_rows,
              "lengths": {"samples": count, "median": lengths[count // 2], "p90": lengths[int(count * 0.9)],
                          "max": lengths[-1], "mean": round(sum(lengths) / count, 1)},
              "samples_per_packed_row": round(count / len(rows), 2), **results, "speedup": round(speedup, 2)}
    print(json.dumps(report, indent=2))
    print("\n| mode | non-pad fraction | effective tokens/s | steps |\n|---|---|---|---|")
    for mode in ("padding", "packing"):
        r = results[mode]
        print(f"| {mode} | {r['non_pad_fraction']:.3f} | {r['effective_tokens_per_second']:,} | {r['steps']} |")
    print(f"\npacking / padding effective tokens/s: {speedup:.2f}×")


if __name__ == "__main__":
    main()
