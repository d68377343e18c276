#!/usr/bin/env bash
# The GPU acceptance of every feature that needs a lent GPU (bench/gpu_check.py: the checks, one JSON line each).
#
#   bash bench/gpu_check.sh                       # on the GPU machine: install what it lacks from wheels/, then check
#   bash bench/gpu_check.sh --dry-run             # on CPU: every check's code path on the tiny model (CI runs it)
#   bash bench/gpu_check.sh --checks train_fsdp2 evaluators     # a subset
#   bash bench/gpu_check.sh --fetch-wheels wheels # on a connected machine: the wheels to carry (a few MiB)
#
# The GPU machine has its own torch and transformers and no network: the project's other pure-Python needs come
# as wheels in wheels/ (GPU_CHECK_WHEELS), installed with --no-deps --no-index, and only those whose module does
# not import already, so the machine's torch and transformers stay as they are. Set GPU_CHECK_PYTHON (e.g. 3.11)
# to fetch binary wheels for the GPU machine's Python when it differs from this one. DeepSpeed, bitsandbytes,
# flash-attn and vLLM (~320 MB) are not carried (too large, or ops to build): their checks print a skip with the reason.
# Time: the checks share --budget-s (default 480 s: under 8 minutes; each also has its own timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
wheels=${GPU_CHECK_WHEELS:-wheels}
# distribution==version (requirements*.txt's pins) and the module that shows it is installed
carried=("hydra-core==1.3.8 hydra" "omegaconf==2.3.1 omegaconf" "antlr4-python3-runtime==4.9.3 antlr4"
         "peft==0.18.0 peft" "accelerate==1.15.0 accelerate" "sentencepiece==0.2.3 sentencepiece"
         "psutil==7.1.3 psutil" "liger-kernel==0.8.5 liger_kernel")
max_carry_bytes=$((64 * 1024 * 1024))

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    dest=${2:?usage: bash bench/gpu_check.sh --fetch-wheels DIR}
    mkdir -p "$dest"
    target=()
    [[ -n "${GPU_CHECK_PYTHON:-}" ]] && target=(--python-version "$GPU_CHECK_PYTHON" --only-binary=:all:)
    for entry in "${carried[@]}"; do
        spec=${entry%% *}
        # antlr4-python3-runtime 4.9.3 is published as a source archive only: build its (pure-Python) wheel
        "$python" -m pip download --quiet --no-deps "${target[@]}" -d "$dest" "$spec" 2>/dev/null \
            || "$python" -m pip wheel --quiet --no-deps -w "$dest" "$spec"
    done
    rm -f "$dest"/*.tar.gz
    size=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
    echo "carried wheels: $(ls "$dest"/*.whl | wc -l) files, $((size / 1024)) KiB (limit $((max_carry_bytes / 1024)) KiB)"
    (( size <= max_carry_bytes )) || { echo "error: $dest: the wheels exceed 64 MiB" >&2; exit 2; }
    exit 0
fi

if [[ " $* " != *" --dry-run "* ]]; then
    missing=()
    for entry in "${carried[@]}"; do
        "$python" -c "import ${entry##* }" 2>/dev/null || missing+=("${entry%% *}")
    done
    if (( ${#missing[@]} )); then
        [[ -d "$wheels" ]] || { echo "error: $wheels: no such folder; missing ${missing[*]} (bash bench/gpu_check.sh --fetch-wheels $wheels on a connected machine)" >&2; exit 2; }
        echo "installing from $wheels: ${missing[*]}" >&2
        "$python" -m pip install --quiet --no-deps --no-index --find-links "$wheels" "${missing[@]}" >&2
    fi
fi
exec "$python" -m bench.gpu_check "$@"
