#!/usr/bin/env bash
# The GPU run (issue #18 item 5), one prepared script for a machine lent for minutes:
#   1. pytest -m gpu: a bf16 training step, the LoRA bank == peft, generation with mixed
#      adapters, memory freed on unload, all on CUDA (tests/unit/server/test_device_paths.py);
#   2. bench/serving.py, bench/generation.py and bench/training.py with --device cuda, short
#      settings, each writing its own section into a scratch markdown file;
#   3. bench/gpu_report.py: one "## GPU run (bench/gpu.sh)" section of docs/benchmarks.md with
#      the device name, each step's exit status and time, and the three benchmarks' sections.
# Each step has its own time limit; all of them together fit in the --budget-s (480 s).
#
#   bench/gpu.sh                    # run it (exits 0 with a message when there is no CUDA)
#   bench/gpu.sh --dry-run          # print the steps, run nothing
#   bench/gpu.sh --device cuda:1 --docs /tmp/b.md --out /tmp/gpu-run
#
# Environment: PYTHON (default .venv/bin/python, else python3).
set -uo pipefail

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --device DEV (cuda, cuda:N; default cuda)  --budget-s S (default 480)"
  echo "         --docs FILE (default docs/benchmarks.md)  --out DIR (default: a temp dir)  --dry-run  -h"
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE="cuda"
BUDGET=480
DOCS="$ROOT/docs/benchmarks.md"
OUT=""
DRY=0
value() {  # the option's value, or status 2 when it has none
  [ $# -ge 2 ] && [ -n "$2" ] || { echo "bench/gpu.sh: $1 needs a value" >&2; exit 2; }
}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) value "$@"; DEVICE="$2"; shift 2 ;;
    --budget-s) value "$@"; BUDGET="$2"; shift 2 ;;
    --docs) value "$@"; DOCS="$2"; shift 2 ;;
    --out) value "$@"; OUT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$DEVICE" in
  cuda|cuda:[0-9]*) ;;
  *) echo "bench/gpu.sh: --device must be cuda or cuda:N, not '$DEVICE'" >&2; exit 2 ;;
esac
case "$BUDGET" in
  ''|*[!0-9]*) echo "bench/gpu.sh: --budget-s must be a whole number of seconds" >&2; exit 2 ;;
esac

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
cd "$ROOT"
export PYTHONPATH="$ROOT/server:$ROOT/client${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -n "$OUT" ] || OUT="${TMPDIR:-/tmp}/tuneserve-gpu-run.$$"
SCRATCH="$OUT/sections.md"

# Each step: name, limit (s, scaled to the budget), command.
scale() { echo $(( $1 * BUDGET / 480 )); }
STEPS=(
  "tests|$(scale 100)|$PY -m pytest -m gpu -q -rs -p no:cacheprovider tests/unit/server/test_device_paths.py"
  "serving|$(scale 170)|$PY bench/serving.py --device $DEVICE --quick --no-wait --k 1,8 --adapters 16 --memory-points 1,8 --max-resident 16 --cold-n 4 --seconds 5 --warmup 1 --test-rows 308 --docs $SCRATCH --save-json $OUT/serving.json"
  "generation|$(scale 90)|$PY bench/generation.py --device $DEVICE --max-new-tokens 32 --threads 4 --docs $SCRATCH --save-json $OUT/generation.json"
  "training|$(scale 100)|$PY bench/training.py --device $DEVICE --per-label 6 --labels 20 --epochs 1 --test-rows 200 --no-tuned-baseline --docs $SCRATCH"
)

if [ "$DRY" = 1 ]; then
  echo "bench/gpu.sh --dry-run: device $DEVICE, budget ${BUDGET}s, docs $DOCS, out $OUT"
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    echo "step $name (limit ${limit}s): $cmd"
  done
  echo "step report: $PY bench/gpu_report.py --out $OUT --sections $SCRATCH --docs $DOCS --device $DEVICE"
  exit 0
fi

mkdir -p "$OUT"
if ! NAME="$("$PY" -c "import sys, torch
if not torch.cuda.is_available():
    sys.exit(3)
print(torch.cuda.get_device_name(torch.device('$DEVICE')))" 2>"$OUT/probe.err")"; then
  echo "bench/gpu.sh: no CUDA device here (torch.cuda.is_available() is False with $PY): nothing to run."
  echo "The CPU suite runs the same code paths (tests/unit/server/test_device_paths.py, device=cpu)."
  exit 0
fi
echo "bench/gpu.sh: $NAME ($DEVICE), budget ${BUDGET}s, results in $OUT"

: >"$OUT/steps.tsv"
failed=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$step"
  echo "== $name (limit ${limit}s): $cmd"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$cmd" >"$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s)
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((t1 - t0))" "$limit" >>"$OUT/steps.tsv"
  tail -n 5 "$OUT/$name.log"
  [ "$rc" = 0 ] || { echo "== $name FAILED (exit $rc; 124: hit its time limit); log $OUT/$name.log"; failed=1; }
done
"$PY" bench/gpu_report.py --out "$OUT" --sections "$SCRATCH" --docs "$DOCS" --device "$DEVICE" --device-name "$NAME" || failed=1
exit $failed
