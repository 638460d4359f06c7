#!/usr/bin/env bash
# The GPU figures of docs/BENCHMARKS.md (issue 6), stage by stage; each stage's full log goes to $OUT (or
# runs/gpu_suite), and its last lines to the terminal.
#
#   bash benchmarks/gpu_suite.sh [STAGE ...]     stages: mfu offload overhead codec (default: all four)
#
#   mfu       MFU and tokens/s of the ~1B preset, ZeRO-2 bf16, 2048 tokens/sample (with and without the large-v3
#             Whisper tower)
#   offload   peak memory of the 3b preset under ZeRO-3 + CPU offload
#   overhead  ds_train's step vs a bare DeepSpeed loop, 3b preset, ZeRO-3 + CPU offload
#   codec     batched vs one-at-a-time encoding: equal lengths, then a 1-20 s mix with the full-size DAC
#
# Each program is stopped after STEP_TIMEOUT seconds (default 500, to fit one stage in a 10-minute remote command).
# The offload stages build DeepSpeed's CPU Adam op on first use: that needs g++, ninja and the Python headers.
#
# Uses `python3` (PYTHON=... to change) as it is: on a machine without network, carry the wheels that
# benchmarks/gpu_kit.sh makes. Without a GPU only the CPU smoke tests of `mfu` and `codec` run.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=${OUT:-runs/gpu_suite}
mkdir -p "$out"
py=${PYTHON:-python3}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(mfu offload overhead codec)
gpu=$($py -c "import torch; print(int(torch.cuda.is_available()))")

step() {
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    timeout "${STEP_TIMEOUT:-500}" "$@" >"$out/$name.log" 2>&1
    echo "--- exit $? after $((SECONDS - start)) s; last lines:"
    grep -v -i -E "warn|^\s*$" "$out/$name.log" | tail -n "${TAIL:-4}"
}

{
    date -u
    $py - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print(" | ".join(f"{d} {md.version(d)}" for d in ("deepspeed", "transformers", "descript-audio-codec")))
print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
    [ "$gpu" = 1 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} | tee "$out/versions.txt"

for stage in "${stages[@]}"; do
    case $stage in
    mfu)
        step mfu_1b $py -m benchmarks.mfu --preset 1b --micro-batch 4 --tokens 2048 --steps 20
        if [ "$gpu" = 1 ]; then
            step mfu_1b_whisper $py -m benchmarks.mfu --preset 1b --micro-batch 4 --tokens 2048 --steps 20 --whisper
        fi
        ;;
    offload)
        if [ "$gpu" = 1 ]; then
            $py -c "import os, sysconfig; p = sysconfig.get_paths()['include'] + '/Python.h'; print('Python headers:', p if os.path.exists(p) else 'MISSING (CPU Adam cannot build)')"
            step zero3_offload_3b $py -m benchmarks.mfu --zero3-offload --micro-batch 4 --tokens 2048
        else
            echo "=== offload: skipped (the 3b preset needs a GPU)"
        fi
        ;;
    overhead)
        if [ "$gpu" = 1 ]; then
            step overhead_3b $py -m benchmarks.trainer_overhead --preset 3b --ds zero3_offload_bf16.json \
                --micro-batch 4 --steps 5
        else
            echo "=== overhead: skipped (the 3b preset needs a GPU)"
        fi
        ;;
    codec)
        step codec_equal $py -m benchmarks.codec_throughput --utterances 64 --seconds 4 --batch 16
        if [ "$gpu" = 1 ]; then
            step codec_mix $py -m benchmarks.codec_throughput --utterances 64 --mix 1,20 --batch 16 --full-size-dac
        else
            step codec_mix $py -m benchmarks.codec_throughput --utterances 16 --mix 1,20 --batch 16 --repeats 1
        fi
        ;;
    *)
        echo "unknown stage $stage (mfu, offload, overhead, codec)" >&2
        exit 2
        ;;
    esac
done
