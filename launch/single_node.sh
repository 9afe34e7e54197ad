#!/usr/bin/env bash
# One node: a recipe on every GPU of this machine, through DeepSpeed's launcher (`alpaca-ds launch`).
#
#   launch/single_node.sh                                       # launch/recipes/alpaca_7b.yaml on this node's GPUs
#   RECIPE=launch/recipes/alpaca_13b.yaml GPUS_PER_NODE=4 launch/single_node.sh --set batch.micro_batch_size=2
#   launch/single_node.sh --dry-run                             # print the command and DeepSpeed config only
#
# Arguments go to `alpaca-ds launch` (--set KEY=VALUE, --dry-run). Run it again to resume. Environment:
#   RECIPE          launch/recipes/alpaca_7b.yaml
#   GPUS_PER_NODE   the GPUs nvidia-smi lists (8 when it lists none)
#   MASTER_PORT     29500; give each run on a shared machine its own
# NCCL on one node rarely needs help; when it does: NCCL_DEBUG=INFO shows what it chose, NCCL_P2P_DISABLE=1
# works around broken peer-to-peer (some VMs and consumer GPUs). All knobs: launch/README.md.
# The alpaca-ds on PATH runs (activate its virtual environment first).
set -euo pipefail
cd "$(dirname "$0")/.."   # recipes name their files relative to the repository root

RECIPE=${RECIPE:-launch/recipes/alpaca_7b.yaml}
if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE=$( (nvidia-smi --list-gpus 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$GPUS_PER_NODE" -gt 0 ] || GPUS_PER_NODE=8
fi
MASTER_PORT=${MASTER_PORT:-29500}

exec alpaca-ds launch --config "$RECIPE" --nodes 1 --gpus-per-node "$GPUS_PER_NODE" --master-port "$MASTER_PORT" "$@"
