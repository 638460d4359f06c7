#!/usr/bin/env bash
# Train on several machines through the deepspeed launcher (pdsh/ssh from this node to every host in the hostfile).
# usage: MASTER_ADDR=<rank-0 host address> [GLOO_SOCKET_IFNAME=eth0] [NCCL_SOCKET_IFNAME=eth0] \
#          bash launch/train_multi_node.sh HOSTFILE RUN_CONFIG.yaml [section.key=value ...] [--resume | --auto-resume]
# Run it on the hostfile's first host. Every node needs the same repository path, working directory and Python
# environment (the active one, or the repository's .venv: run `bash launch/test.sh` or source _env.sh once on each),
# passwordless ssh from this node to every host, identical data paths, and train.output_dir on storage every node
# shares (checked at start-up). See docs/LAUNCH.md, "Several machines". `python -m ds_train.runner` is the `deepspeed`
# command that passes a stop signal on ("Stopping") and the variables the remote ranks need (PATH, HF_*, GLOO_*/NCCL_*
# such as the *_SOCKET_IFNAME interface, TORCH_*, ...).
source "$(dirname "${BASH_SOURCE[0]}")/_train_env.sh"
if [ $# -lt 2 ] || [ -z "${MASTER_ADDR:-}" ]; then
  echo "usage: MASTER_ADDR=<rank-0 host> $0 HOSTFILE RUN_CONFIG.yaml [section.key=value ...] [--resume | --auto-resume]" >&2
  exit 2
fi
hostfile=$1
config=$2
shift 2
# DS_LAUNCH_EXTRA passes launcher flags through, e.g. "--no_ssh --node_rank 0" to start one node's ranks by hand.
# shellcheck disable=SC2086
exec python -m ds_train.runner --hostfile "$hostfile" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  ${DS_LAUNCH_EXTRA:-} --module ds_train train --config "$config" "$@"
