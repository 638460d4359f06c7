#!/usr/bin/env bash
# Train on one machine with N processes (GPUs, or CPU ranks where there is no GPU) through the deepspeed launcher.
# usage: bash launch/train_single_node.sh NUM_GPUS RUN_CONFIG.yaml [section.key=value ...] [--resume | --auto-resume]
# This process becomes `python -m ds_train.runner`, the `deepspeed` command that passes SIGTERM/SIGINT on to the ranks:
# they save at the end of the step and exit 0. They get DS_TRAIN_STOP_GRACE seconds (default 300) for that; a second
# signal cuts it to DeepSpeed's launcher's 30 s. See docs/LAUNCH.md, "Stopping".
source "$(dirname "${BASH_SOURCE[0]}")/_train_env.sh"
if [ $# -lt 2 ]; then
  echo "usage: $0 NUM_GPUS RUN_CONFIG.yaml [section.key=value ...] [--resume | --auto-resume]" >&2
  exit 2
fi
num_gpus=$1
config=$2
shift 2
exec python -m ds_train.runner --num_gpus "$num_gpus" --master_port "${MASTER_PORT:-29500}" --module ds_train train --config "$config" "$@"
