"""Write the difference between a fine-tuned model and its base, to share without the base weights.

    python make_delta.py --base-model-path llama-7b --target-model-path my-7b-sft --delta-path my-7b-delta

How the arithmetic keeps the round trip exact (every weight is checked; one line says how many are not),
and what the delta records: see models/delta.py.
"""
import argparse
import sys

from models.delta import DELTA_DTYPES, make_delta
from models.weights_io import DEFAULT_MAX_SHARD_SIZE, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model-path", required=True, help="the original model folder")
    parser.add_argument("--target-model-path", required=True, help="the fine-tuned model folder")
    parser.add_argument("--delta-path", required=True, help="output folder (must not exist, see --overwrite)")
    parser.add_argument("--delta-dtype", choices=sorted(DELTA_DTYPES),
                        help="store the delta in this dtype (default: each tensor's own; fp32 makes a bf16/fp16 "
                             "round trip bit-exact, fp64 an fp32 one; otherwise one line says how many weights "
                             "do not round-trip)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="e.g. 5GB, 200MB, 1000 (bytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --delta-path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: make_delta(args.base_model_path, args.target_model_path, args.delta_path,
                                      delta_dtype=args.delta_dtype, max_shard_size=args.max_shard_size,
                                      overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
