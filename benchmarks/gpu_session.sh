#!/usr/bin/env bash
# One GPU session's evidence for the fast path, in one call: no DALI, no pip, no network needed.
#
#   bash benchmarks/gpu_session.sh OUT [smoke] [dali]
#
#   OUT    where the results go (on the device machine: $OUT). At most 8 files, what the device tool brings back:
#            summary.txt    the session at a glance: machine, each step's status, P1a/P1b/P2/P5, teacher modes,
#                           compile_student, profile shares (rewritten after every step: its tail is the news)
#            session.json   the same as data: environment, measured peak, steps (rc, seconds, limit, command),
#                           targets, profiles
#            session.log    everything every step printed
#            gpu_tests.xml  JUnit XML of the GPU tests of the fast path
#            bench_resnet18_shufflenetv2.json, bench_convnext_base_resnet18.json   the two synthetic benches
#            more.tar.gz    extras/: the profiles (profile_*/profile.{json,png}), the teacher-compile and
#                           compile_student benches
#   smoke  the same steps on a CPU at toy size (timm test models, 32 px, N = 16, 2 steps): what CI runs
#          (tests/test_gpu_session.py); graph and compile modes, impossible or slow on a CPU, become eager there.
#   dali   the other part, for a later call once DALI's chunks are in /root/dali (../shared/device/README.md):
#          installs DALI, then dali_tests (pytest -m gpu of the pipeline tests -> gpu_dali_tests.xml), parity
#          (preprocess_parity.py -> preprocess_parity_<device>.json), jpegs (the ImageNet-like folder) and
#          bench_pipeline_resnet18_shufflenetv2 (--data both --peer timm: P3, P4); BUDGET_S 300 (timeout_s 360).
#
# Steps, in order of importance, each under `timeout` with its own limit and what is left of BUDGET_S (480 s on a
# GPU: the call itself needs timeout_s >= 540); a step that fails or times out is recorded and the next one runs:
#   env                 device, driver, versions, commit / source fingerprint          -> session.json "env"
#   peak                bf16 matmul TFLOP/s, exported as UNIXKD_PEAK_FLOPS: the MFU denominator of every later step
#   gpu_tests           pytest -m gpu of the fast path: graph replay vs eager over many steps (BN statistics),
#                       fresh draws per replay, the teacher graph, set_sync_debug_mode("error") for every method
#   bench_<pair>        bench --data synthetic --fast-path both --selectors kd,random,unix, P2 and the teacher
#                       micro-benchmark (eager, graph), both ImageNet pairs (N = 256, k = 192, bf16, channels_last)
#   profile_<name>      profile --data synthetic of the small pair: unix (fused), unix (eager), kd
#   teacher_compile_<pair>  bench --selectors kd with the teacher modes eager, graph, compile (which wins)
#   compile_student     the small pair's kd and unix with train.compile_student=default
# Environment: PYTHON (python3), BUDGET_S, ONLY (comma-separated step names: run just those, e.g. a second call
# for what the first could not finish), STEPS/WARMUP (bench), PROFILE_STEPS/PROFILE_WARMUP, NOTE, WORK (scratch
# folder; default a new one under /tmp).
set -uo pipefail

usage() {
    echo "usage: bash benchmarks/gpu_session.sh OUT [smoke] [dali]" >&2
    exit 2
}
[ $# -ge 1 ] && [ $# -le 3 ] || usage
OUT_ARG=$1
shift
MODE=gpu PART=compute
for word in "$@"; do
    case "$word" in
        smoke) MODE=smoke ;;
        dali) PART=dali ;;
        *) usage ;;
    esac
done
mkdir -p "$OUT_ARG" || exit 2
OUT=$(cd "$OUT_ARG" && pwd)
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d /tmp/gpu_session.XXXXXX)}
mkdir -p "$WORK/extras" "$WORK/runs"
: > "$WORK/steps.tsv"
ONLY=${ONLY:-}
export PYTHONUNBUFFERED=1
# the code imports itself as `unixkd` (what pip install -e . installs); on a machine where it is not installed
# (the GPU machine gets a copy of the working tree), a link named unixkd to this folder does the same
mkdir -p "$WORK/pkg" && ln -sfn "$PWD" "$WORK/pkg/unixkd"
export PYTHONPATH=$WORK/pkg:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1

if [ "$MODE" = gpu ]; then
    [ "$PART" = dali ] && BUDGET_S=${BUDGET_S:-300}
    BUDGET_S=${BUDGET_S:-480}
    STEPS=${STEPS:-40} WARMUP=${WARMUP:-8} PROFILE_STEPS=${PROFILE_STEPS:-20} PROFILE_WARMUP=${PROFILE_WARMUP:-5}
    # limits per step (s): the expected time on an H200 with room for a slow first compile or cuDNN autotuning
    CAP_ENV=60 CAP_PEAK=60 CAP_TESTS=150 CAP_BENCH=120 CAP_PROFILE=60 CAP_COMPILE=150
    SIZE=(model.num_classes=1000)
    PAIR_MODELS_resnet18_shufflenetv2=()
    PAIR_MODELS_convnext_base_resnet18=()
    MAIN_TEACHER_MODES=eager,graph
    COMPILE_TEACHER_MODES=eager,graph,compile
    COMPILE_STUDENT=default
    PEAK_ARGS=()
    JPEGS=(--classes 128 --train-per-class 100 --val-per-class 1)  # 50 batches of 256: an epoch > warm-up + steps
    DALI_SIZE=(model.num_classes=1000)
    CAP_DALI_TESTS=120 CAP_PARITY=60 CAP_JPEGS=90 CAP_PIPELINE=180
else
    BUDGET_S=${BUDGET_S:-240}
    STEPS=${STEPS:-2} WARMUP=${WARMUP:-1} PROFILE_STEPS=${PROFILE_STEPS:-2} PROFILE_WARMUP=${PROFILE_WARMUP:-1}
    CAP_ENV=60 CAP_PEAK=60 CAP_TESTS=90 CAP_BENCH=60 CAP_PROFILE=60 CAP_COMPILE=60
    SIZE=(model.num_classes=10 data.image_size=32 data.batch_size=16 selection.k=12 mixed_precision=no)
    PAIR_MODELS_resnet18_shufflenetv2=(model.teacher=test_resnet model.student=test_efficientnet)
    PAIR_MODELS_convnext_base_resnet18=(model.teacher=test_convnext model.student=test_resnet)
    MAIN_TEACHER_MODES=eager  # a CPU has no CUDA graph, and compiling there takes minutes
    COMPILE_TEACHER_MODES=eager
    COMPILE_STUDENT=none
    PEAK_ARGS=(--smoke)
    JPEGS=(--classes 4 --train-per-class 12 --val-per-class 1 --size 64)
    DALI_SIZE=("${SIZE[@]}" data.num_threads=2)
    CAP_DALI_TESTS=90 CAP_PARITY=60 CAP_JPEGS=60 CAP_PIPELINE=90
fi
NOTE=${NOTE:-"benchmarks/gpu_session.sh $MODE $PART; random teacher weights"}
RESERVE_S=8    # kept back for the last summary and tar
MIN_STEP_S=15  # a step given less than this is skipped
failed=()

# step NAME LIMIT_S COMMAND...: run under `timeout` with min(LIMIT_S, what is left), record it, refresh the summary
step() {
    local name=$1 cap=$2
    shift 2
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return 0
    fi
    local left=$((BUDGET_S - SECONDS - RESERVE_S))
    local limit=$((cap < left ? cap : left))
    local rc status t0=$SECONDS
    if [ "$limit" -lt "$MIN_STEP_S" ]; then
        echo "=== [$name] skipped: ${left} s of the ${BUDGET_S} s budget left"
        rc=-1 status=skipped
    else
        echo "=== [$name] $(date -u +%T) (limit ${limit} s, ${SECONDS} s into the session): $*"
        timeout -k 5 "$limit" "$@"
        rc=$?
        case $rc in
            0) status=ok ;;
            124 | 137) status=timeout ;;
            *) status=failed ;;
        esac
        echo "=== [$name] $status (exit $rc) after $((SECONDS - t0)) s"
    fi
    [ "$status" = ok ] || failed+=("$name")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" "$status" "$*" >> "$WORK/steps.tsv"
    refresh
}

refresh() {  # the files that come back, as far as the session got
    tar czf "$OUT/more.tar.gz.tmp" -C "$WORK" extras && mv "$OUT/more.tar.gz.tmp" "$OUT/more.tar.gz"
    "$PYTHON" benchmarks/gpu_session.py summary "$WORK" "$OUT" --mode "$MODE" --part "$PART" || echo "(summary failed)"
}

pair_args() {  # PAIR_ARGS=(the overrides of one pair: the size, the models (smoke), a scratch out_dir)
    local models="PAIR_MODELS_$1[@]"
    PAIR_ARGS=("${SIZE[@]}" "${!models}" "out_dir=$WORK/runs/$1")
}

bench_cmd() {  # bench_cmd PAIR JSON SELECTORS FAST_PATH TEACHER_MODES [OVERRIDES...] -> CMD=(...)
    local pair=$1 json=$2 selectors=$3 path=$4 modes=$5
    shift 5
    pair_args "$pair"
    CMD=("$PYTHON" launch.py bench --config "configs/imagenet/$pair.yaml" --data synthetic --fast-path "$path"
         --selectors "$selectors" --steps "$STEPS" --warmup "$WARMUP" --teacher-modes "$modes" --note "$NOTE"
         --json "$json" "${PAIR_ARGS[@]}" "$@")
}

main() {
    echo "=== gpu_session.sh $MODE $PART: $(date -u +%FT%TZ), results in $OUT, scratch in $WORK, budget ${BUDGET_S} s"
    if [ "$PART" = dali ] && ! "$PYTHON" -c "import nvidia.dali" 2>/dev/null && [ -f /root/dali/dali_install.py ]; then
        # the chunks copied there by earlier calls (../shared/device/README.md): install into /tmp/dali-site
        step dali_install "$CAP_ENV" "$PYTHON" /root/dali/dali_install.py
        export PYTHONPATH=/tmp/dali-site:$PYTHONPATH
    fi
    step env "$CAP_ENV" "$PYTHON" benchmarks/gpu_session.py env "$WORK/env.json"
    if [ "$MODE" = gpu ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "error: torch sees no CUDA device here; run with 'smoke' on a CPU" >&2
        refresh
        return 2
    fi
    if [ "$PART" = dali ]; then
        dali_part
    else
        compute_part
    fi
    echo "=== done in ${SECONDS} s"
    GPU_SESSION_PRINT=1 refresh
    [ ${#failed[@]} -eq 0 ]
}

compute_part() {
    step peak "$CAP_PEAK" "$PYTHON" benchmarks/gpu_session.py peak "$WORK/peak.json" "${PEAK_ARGS[@]}"
    if [ -f "$WORK/peak.json" ]; then
        UNIXKD_PEAK_FLOPS=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['peak_flops_per_s'])" "$WORK/peak.json")
        UNIXKD_PEAK_BASIS=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['basis'])" "$WORK/peak.json")
        export UNIXKD_PEAK_FLOPS UNIXKD_PEAK_BASIS
    fi
    step gpu_tests "$CAP_TESTS" "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider --durations=15 \
        --junitxml "$OUT/gpu_tests.xml" tests/test_fastpath.py tests/test_syncs.py tests/test_unix.py \
        tests/test_bench_profile.py
    local pair spec selector path name small=resnet18_shufflenetv2
    for pair in resnet18_shufflenetv2 convnext_base_resnet18; do
        bench_cmd "$pair" "$OUT/bench_$pair.json" kd,random,unix both "$MAIN_TEACHER_MODES"
        step "bench_$pair" "$CAP_BENCH" "${CMD[@]}"
    done
    pair_args "$small"
    for spec in "unix fused unix" "kd fused kd" "unix eager unix_eager"; do
        read -r selector path name <<< "$spec"
        step "profile_$name" "$CAP_PROFILE" "$PYTHON" launch.py profile --config "configs/imagenet/$small.yaml" \
            --data synthetic --selector "$selector" --fast-path "$path" --steps "$PROFILE_STEPS" \
            --warmup "$PROFILE_WARMUP" --note "$NOTE" --out "$WORK/extras/profile_$name" "${PAIR_ARGS[@]}"
    done
    for pair in resnet18_shufflenetv2 convnext_base_resnet18; do
        bench_cmd "$pair" "$WORK/extras/bench_teacher_compile_$pair.json" kd fused "$COMPILE_TEACHER_MODES"
        step "teacher_compile_$pair" "$CAP_COMPILE" "${CMD[@]}"
    done
    bench_cmd "$small" "$WORK/extras/bench_compile_student_$small.json" kd,unix fused none \
        "train.compile_student=$COMPILE_STUDENT"
    step compile_student "$CAP_COMPILE" "${CMD[@]}"
}

# The part that needs DALI (a later call, once its chunks are in /root/dali): the DALI GPU tests (mixed decode vs
# CPU decode on photos, fp16/NHWC delivery, the val graph), the val preprocessing parity in GPU mode, and the
# small pair through the loader beside timm's KD task (P3, P4).
dali_part() {
    local device=gpu small=resnet18_shufflenetv2
    [ "$MODE" = gpu ] || device=cpu
    step dali_tests "$CAP_DALI_TESTS" "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider --durations=10 \
        --junitxml "$OUT/gpu_dali_tests.xml" tests/test_pipeline.py tests/test_pipeline_fastpath.py \
        tests/test_preprocess.py
    step parity "$CAP_PARITY" "$PYTHON" benchmarks/preprocess_parity.py --device "$device" \
        --photos "$WORK/parity_photos" --json "$OUT/preprocess_parity_$device.json" \
        --label "benchmarks/gpu_session.sh $MODE dali: DALI $device mode"
    step jpegs "$CAP_JPEGS" "$PYTHON" benchmarks/gpu_session.py jpegs "$WORK/jpegs" "${JPEGS[@]}"
    local models="PAIR_MODELS_$small[@]"
    step "bench_pipeline_$small" "$CAP_PIPELINE" "$PYTHON" launch.py bench --config "configs/imagenet/$small.yaml" \
        --data both --peer timm --fast-path both --selectors kd,random,unix --steps "$STEPS" --warmup "$WARMUP" \
        --teacher-modes none --note "$NOTE" --json "$OUT/bench_pipeline_$small.json" "data.root=$WORK/jpegs" \
        "${DALI_SIZE[@]}" "${!models}" "out_dir=$WORK/runs/pipeline"
}

# one compound command, read whole before it runs: a script edited while it runs cannot change what runs next
{
    main 2>&1 | tee -a "$OUT/session.log"
    exit "${PIPESTATUS[0]}"
}
