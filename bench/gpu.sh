#!/usr/bin/env bash
# The GPU share of the benchmarks, as parallel jobs on one GPU (a lent H100/H200):
#   issue 3 - accuracy of dm, datadam, ncfm, dm+fyi at IPC 1/10/50 (1000 iterations;
#             the IPC 10 curve at 0/50/100/200/1000), bf16 parity, random/herding rows;
#   issue 4 - SRe2L/INFER soft-label sets at IPC 10/50, Genie at the official 4000
#             iterations, PTQ with the minmax/percentile/mse observers;
#   the CUDA tests.
# Accuracy only: the jobs share the GPU, so their seconds are not speed figures (speed
# is measured on CPU by bench/matching_speed.py). Each job logs to OUT/NAME.log and
# writes bench/results/*.json when it finishes; everything stops after LIMIT seconds.
#
#   bash bench/gpu.sh OUT [LIMIT_S]
#
# The device has torch but not faiss-cpu or mlxtend: carry their wheels and the cached
# datasets (DISTILL_DATA_CACHE), e.g. pip install --no-index --no-deps --target /tmp/site
# .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD DISTILL_DATA_CACHE=$PWD/.gpucache.
set -u
OUT=${1:?usage: bench/gpu.sh OUT [LIMIT_S]}
LIMIT=${2:-420}
mkdir -p "$OUT"
DEADLINE=$(($(date +%s) + LIMIT))
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
PY=${PYTHON:-python3}
NOTE="GPU shared by 6 concurrent benchmark jobs (seconds are not speed figures)"
M="$PY bench/matching.py --device cuda --tag gpu"

job() {  # job NAME CMD...: run the commands one after another, in the background
  local name=$1
  shift
  (
    for cmd in "$@"; do
      if [ "$(date +%s)" -ge "$DEADLINE" ]; then
        echo "SKIPPED (time limit): $cmd"
        continue
      fi
      echo "+ $cmd"
      eval "$cmd" || echo "FAILED ($?): $cmd"
    done
  ) >"$OUT/$name.log" 2>&1 &
}

# Speed first, one job alone on the GPU (the shared jobs' seconds are not speed figures).
# Skipped when its result exists; ~1 min.
speed=bench/results/matching_speed_dm_datadam_ncfm_cuda.json
[ -f "$speed" ] || timeout 240 $PY bench/matching_speed.py --device cuda \
  --methods dm datadam ncfm --precisions fp32 bf16 --steps 20 >"$OUT/speed_cuda.log" 2>&1

$PY -m pytest -p no:cacheprovider tests -k cuda >"$OUT/pytest_cuda.log" 2>&1 &

# Commands whose result file already holds every point at the same settings are skipped
# (--skip-done), so the script can be run again on a later lease to finish what an
# earlier one did not; results of other settings (the grid from before siamese=batch
# became the default, say) are redone.
M="$M --skip-done --note '$NOTE'"
curve="--evals 0 50 100 200 1000"
for method in dm datadam dm+fyi; do
  job "$method" \
    "$M --method $method --ipc 10 $curve" \
    "$M --method $method --ipc 1 --evals 0 1000" \
    "$M --method $method --ipc 50 --evals 0 1000"
done
# NCFM at its defaults (pool of 20 networks x 60 epochs, trained once per machine and
# cached): the pool alone took ~340 s of a GPU shared with 5 other jobs. A first lease
# ran a reduced pool (tag gpu_pool5x20, in bench/results); these are the default rows.
job ncfm \
  "$M --method ncfm --ipc 10 --evals 0 200 1000" \
  "$M --method ncfm --ipc 1 --evals 0 1000" \
  "$M --method ncfm --ipc 50 --evals 0 1000"
job baselines \
  "for i in 1 10 50; do for m in random herding; do $M --method \$m --ipc \$i --evals 0; done; done" \
  "$M --method dm --ipc 10 --evals 100 1000 --set precision=bf16 --tag gpu_bf16" \
  "$M --method datadam --ipc 10 --evals 100 1000 --set precision=bf16 --tag gpu_bf16"
T="$PY bench/teacher_calib.py --device cuda"
soft() {  # soft METHOD IPC RELABEL: the soft-label row, unless its result exists
  local suffix=""
  [ "$3" = online ] && suffix=_online
  echo "[ -f bench/results/softlabel_mnist5k_$1_ipc$2_gpu$suffix.json ] || $T --stage softlabel --soft-methods $1 --ipc $2 --tag _gpu --relabel $3"
}
job teacher \
  "$(soft sre2l 10 online)" "$(soft infer 10 online)" \
  "$(soft sre2l 50 stored)" "$(soft infer 50 stored)" \
  "$(soft sre2l 50 online)" "$(soft infer 50 online)" \
  "$T --stage calib --calib-methods genie --genie-iterations 4000 --tag _gpu4000" \
  "for o in minmax percentile mse; do $T --stage ptq --observer \$o --ptq-sets zeroq_256 genie_256_gpu4000 --tag _genie4000; done"

# stop whatever is still running at the limit; what finished has written its results
(
  sleep "$LIMIT"
  while :; do
    pkill -f bench/matching.py
    pkill -f bench/teacher_calib.py
    sleep 2
  done
) &
killer=$!
wait $(jobs -p | grep -v "^$killer$")
kill $killer 2>/dev/null
grep -h "after\|±\|FAILED\|SKIPPED\|Error\|error" "$OUT"/*.log | tail -80
