#!/usr/bin/env bash
# Issue 7's GPU benchmarks for one teacher/student pair, in one call of about 5-7 minutes on an H100 (the
# device tool allows 10 per command):
#
#   bash benchmarks/gpu_fastpath.sh PAIR [RESULTS_DIR]
#
#   PAIR         resnet18_shufflenetv2 | convnext_base_resnet18: 224 px, N = 256, k = 192, bf16, channels_last,
#                random teacher weights (timing does not depend on them), 1000 classes;
#                smoke: the same commands at toy size (32 px, N = 16), runnable on a CPU
#   RESULTS_DIR  where the files go (default benchmarks/results; on the device machine pass $OUT)
#
# 1. The ImageNet-like JPEG folder (benchmarks/make_jpeg_folder.py), unless JPEG_DIR holds one built with the
#    same numbers. Enough images that an epoch outlasts bench's timed loader-alone batches (a new epoch
#    rebuilds the DALI pipeline: a start-up a real ImageNet epoch amortizes). One builder process per core, each
#    its own classes and seed, merged into one train/ and val/ (class folders p<part>_n<class>).
# 2. bench: kd, random, unix, each fused and eager, on the resident batch and through DALI, timm's KD task as
#    the peer, the selection (P2) and teacher-mode micro-benchmarks, the targets -> gpu_<pair>_bench.json
# 3. profile: unix fused, unix eager, kd -> gpu_<pair>_profile_{unix,unix_eager,kd}/profile.{json,png}
# 4. The markdown tables of all of it (benchmarks/table.py) at the end of the log, gpu_<pair>.log.
# That is 8 files: what the device tool brings back from $OUT at most.
#
# DALI: if `import nvidia.dali` fails, /root/dali/dali_install.py installs it (../shared/device/README.md).
# Each command's timeout is what is left of BUDGET_S (default 480 s), so a stall still leaves the results so
# far. Environment: PYTHON (python3), JPEG_DIR, STEPS, WARMUP, PROFILE_STEPS, PROFILE_WARMUP, TEACHER_MODES
# (auto: eager,graph,compile on CUDA), BUDGET_S, NOTE, EXTRA (more key=value overrides); DRY_RUN=1 prints the
# commands without running anything.
set -uo pipefail

usage() {
    echo "usage: bash benchmarks/gpu_fastpath.sh resnet18_shufflenetv2|convnext_base_resnet18|smoke [RESULTS_DIR]" >&2
    exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
PAIR=$1
RESULTS=${2:-benchmarks/results}
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)  # absolute: the commands run from the repo root
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-}
BUDGET_S=${BUDGET_S:-480}
TEACHER_MODES=${TEACHER_MODES:-auto}
export PYTHONUNBUFFERED=1

case "$PAIR" in
    resnet18_shufflenetv2 | convnext_base_resnet18)
        CONFIG=configs/imagenet/$PAIR.yaml
        # 128 classes x 100 = 12,800 train JPEGs = 50 batches of 256 per epoch >= WARMUP + STEPS
        CLASSES=128 TRAIN_PER_CLASS=100 VAL_PER_CLASS=1
        JPEG_DIR=${JPEG_DIR:-data/jpeg_bench}
        STEPS=${STEPS:-40} WARMUP=${WARMUP:-8} PROFILE_STEPS=${PROFILE_STEPS:-20} PROFILE_WARMUP=${PROFILE_WARMUP:-5}
        OVERRIDES=("data.root=$JPEG_DIR" "model.num_classes=1000" "out_dir=runs/gpu_fastpath")
        NEEDS_CUDA=1
        ;;
    smoke)
        CONFIG=configs/demo.yaml
        CLASSES=4 TRAIN_PER_CLASS=12 VAL_PER_CLASS=1  # 48 JPEGs: 3 batches of 16
        JPEG_DIR=${JPEG_DIR:-data/jpeg_bench_smoke}
        STEPS=${STEPS:-2} WARMUP=${WARMUP:-1} PROFILE_STEPS=${PROFILE_STEPS:-2} PROFILE_WARMUP=${PROFILE_WARMUP:-1}
        OVERRIDES=("data.dataset=folder" "data.root=$JPEG_DIR" "data.image_size=32" "data.batch_size=16"
                   "selection.k=12" "model.teacher=test_resnet" "model.teacher_checkpoint=" "model.num_classes=10"
                   "data.num_threads=2" "out_dir=runs/gpu_fastpath_smoke")
        NEEDS_CUDA=
        ;;
    *) usage ;;
esac
read -r -a extra <<< "${EXTRA:-}"
OVERRIDES+=("${extra[@]}")
SEED=0
NOTE=${NOTE:-"issue 7 GPU run of benchmarks/gpu_fastpath.sh $PAIR; random teacher weights; JPEG folder: $CLASSES classes x $TRAIN_PER_CLASS train (make_jpeg_folder.py, seeds $SEED.., one part per core)"}

LOG=$RESULTS/gpu_${PAIR}.log
[ -n "$DRY_RUN" ] || exec > >(tee -a "$LOG") 2>&1
failed=()

# Run "$@" with what is left of the budget as its timeout; a failure is logged and the next command runs.
run() {
    local what=$1
    shift
    echo "+ $*"
    [ -z "$DRY_RUN" ] || return 0
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -le 10 ]; then
        echo "== $what: skipped, the ${BUDGET_S} s budget is spent"
        failed+=("$what (no time left)")
        return 1
    fi
    local t0=$SECONDS
    timeout -k 10 "$left" "$@"
    local rc=$?
    echo "== $what: exit $rc after $((SECONDS - t0)) s (total ${SECONDS} s)"
    [ "$rc" -eq 0 ] || failed+=("$what (exit $rc)")
    return "$rc"
}

# The JPEG folder, in parallel parts merged into one; a stamp file records the numbers it was built with.
build_jpegs() {
    local stamp="classes=$CLASSES train=$TRAIN_PER_CLASS val=$VAL_PER_CLASS seed=$SEED"
    if [ -f "$JPEG_DIR/.built" ] && [ "$(cat "$JPEG_DIR/.built")" = "$stamp" ]; then
        echo "JPEG folder $JPEG_DIR: already built ($stamp)"
        return 0
    fi
    if [ -z "$DRY_RUN" ] && [ -d "$JPEG_DIR" ] && [ -n "$(ls -A "$JPEG_DIR")" ] && [ ! -f "$JPEG_DIR/.built" ]; then
        echo "error: $JPEG_DIR has files this script did not build; set JPEG_DIR to another folder" >&2
        return 1
    fi
    local cores parts per_part i n t0=$SECONDS
    cores=$(nproc)
    parts=$((cores < CLASSES ? cores : CLASSES))
    per_part=$(((CLASSES + parts - 1) / parts))
    [ -n "$DRY_RUN" ] || { rm -rf "$JPEG_DIR" && mkdir -p "$JPEG_DIR/train" "$JPEG_DIR/val" "$JPEG_DIR/parts"; }
    local pids=()
    for ((i = 0; i * per_part < CLASSES; i++)); do
        n=$((CLASSES - i * per_part < per_part ? CLASSES - i * per_part : per_part))
        local cmd=("$PYTHON" benchmarks/make_jpeg_folder.py --out "$JPEG_DIR/parts/$i" --classes "$n"
                   --train-per-class "$TRAIN_PER_CLASS" --val-per-class "$VAL_PER_CLASS" --seed $((SEED + i)))
        # no scikit-learn on the device machine: its photos come along in .gpu/photos (benchmarks/gpu_prepare.sh)
        [ -d .gpu/photos ] && cmd+=(--photos .gpu/photos)
        echo "+ ${cmd[*]}"
        [ -n "$DRY_RUN" ] || { "${cmd[@]}" > "$JPEG_DIR/parts/$i.log" 2>&1 & pids+=($!); }
    done
    [ -z "$DRY_RUN" ] || return 0
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "error: make_jpeg_folder.py failed: $JPEG_DIR/parts/*.log" >&2; cat "$JPEG_DIR"/parts/*.log >&2; return 1; }
    done
    local part split cls
    for part in "$JPEG_DIR"/parts/*/; do
        i=$(basename "$part")
        for split in train val; do
            for cls in "$part$split"/*/; do
                mv "$cls" "$JPEG_DIR/$split/p$(printf %02d "$i")_$(basename "$cls")"
            done
        done
    done
    echo "$stamp" > "$JPEG_DIR/.built"
    echo "JPEG folder $JPEG_DIR: $(find "$JPEG_DIR/train" -name '*.JPEG' | wc -l) train JPEGs in $((SECONDS - t0)) s" \
         "($parts parts; manifests in $JPEG_DIR/parts/*/manifest.json)"
}

echo "== gpu_fastpath.sh $PAIR: $(date -u +%FT%TZ), results in $RESULTS"
if [ -z "$DRY_RUN" ]; then
    git log -1 --format='commit %H %s' 2>/dev/null || true
    if ! "$PYTHON" -c "import nvidia.dali" 2>/dev/null; then
        if [ -f /root/dali/dali_install.py ]; then
            "$PYTHON" /root/dali/dali_install.py && export PYTHONPATH=/tmp/dali-site:${PYTHONPATH:-}
        fi
        "$PYTHON" -c "import nvidia.dali" || {
            echo "error: NVIDIA DALI does not import; on the device machine put its chunks in /root/dali first" \
                 "(../shared/device/README.md)" >&2
            exit 2
        }
    fi
    if [ -n "$NEEDS_CUDA" ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "error: $PAIR is a GPU benchmark and torch sees no CUDA device here (the smoke pair runs on a CPU)" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
fi
build_jpegs || exit 1

PEER=(--peer timm)  # timm's KD task (timm.task) is recent: without it, bench still runs, P4 is then null
if [ -z "$DRY_RUN" ] && ! "$PYTHON" -c "import timm.task" 2>/dev/null; then
    echo "note: this timm has no timm.task (LogitDistillationTask): benchmarking without the timm peer"
    PEER=()
fi
run bench "$PYTHON" launch.py bench --config "$CONFIG" --data both "${PEER[@]}" --fast-path both \
    --selectors kd,random,unix --steps "$STEPS" --warmup "$WARMUP" --teacher-modes "$TEACHER_MODES" \
    --note "$NOTE" --json "$RESULTS/gpu_${PAIR}_bench.json" "${OVERRIDES[@]}"
for spec in "unix fused unix" "unix eager unix_eager" "kd fused kd"; do
    read -r selector path name <<< "$spec"
    run "profile $name" "$PYTHON" launch.py profile --config "$CONFIG" --selector "$selector" --fast-path "$path" \
        --steps "$PROFILE_STEPS" --warmup "$PROFILE_WARMUP" --note "$NOTE" \
        --out "$RESULTS/gpu_${PAIR}_profile_$name" "${OVERRIDES[@]}"
done
tables=()
for f in "$RESULTS/gpu_${PAIR}_bench.json" "$RESULTS"/gpu_"${PAIR}"_profile_*/profile.json; do
    [ -f "$f" ] && tables+=("$f")
done
[ -n "$DRY_RUN" ] || [ ${#tables[@]} -eq 0 ] || run tables "$PYTHON" benchmarks/table.py "${tables[@]}"

if [ ${#failed[@]} -gt 0 ]; then
    echo "== done in ${SECONDS} s; FAILED: ${failed[*]}"
    exit 1
fi
echo "== done in ${SECONDS} s"
