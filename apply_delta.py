"""Rebuild a fine-tuned model from its base and a delta written by make_delta.py, or a published one.

    python apply_delta.py --base-model-path llama-7b --delta-path my-7b-delta --target-model-path my-7b-sft
    python apply_delta.py --base-model-path llama-7b --delta-path panda-7b-delta --target-model-path panda-7b \
        --legacy-delta panda

The base is checked against the fingerprint stored in the delta first (see models/delta.py). Published
deltas (no delta_meta.json) need `--legacy-delta`: `panda` (PandaLLM's: embeddings and lm_head stored as
they are) or `fastchat` (FastChat v1.1 on: every tensor a difference); their base is checked only by
tensor names, shapes, vocabulary size and dtype.
"""
import argparse
import sys

from models.delta import LEGACY_FLAVOURS, apply_delta
from models.weights_io import DEFAULT_MAX_SHARD_SIZE, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model-path", required=True, help="the original model folder")
    parser.add_argument("--delta-path", required=True,
                        help="the folder written by make_delta.py, or a published delta (see --legacy-delta)")
    parser.add_argument("--target-model-path", required=True, help="output folder (must not exist, see --overwrite)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="e.g. 5GB, 200MB, 1000 (bytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --target-model-path")
    parser.add_argument("--no-verify", action="store_true",
                        help="apply even if the base differs from the one the delta was made from (with "
                             "--legacy-delta fastchat: take vocabulary rows the base lacks as the delta's own values)")
    parser.add_argument("--legacy-delta", choices=list(LEGACY_FLAVOURS),
                        help="a published delta without delta_meta.json, made by PandaLLM's original make_delta "
                             "(panda) or FastChat's v1.1+ (fastchat)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: apply_delta(args.base_model_path, args.delta_path, args.target_model_path,
                                       max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                       verify=not args.no_verify, legacy=args.legacy_delta))


if __name__ == "__main__":
    sys.exit(main())
