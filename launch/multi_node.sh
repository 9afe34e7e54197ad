#!/usr/bin/env bash
# Several nodes, with DeepSpeed's launcher (`alpaca-ds launch`), in either of its two multi-node modes.
#
# pdsh/ssh: run once, on the first node; DeepSpeed ssh-es into every host of the hostfile ('worker-0 slots=8'
# per line) and starts its processes there. Needs pdsh and passwordless ssh between the nodes.
#   HOSTFILE=hostfile MASTER_ADDR=10.0.0.1 launch/multi_node.sh
#
# no-ssh: run on every node, each with its NODE_RANK (0 on the node at MASTER_ADDR); no ssh needed, e.g. from
# a scheduler, a pod per node, or tmux on each machine. With a hostfile or with NNODES x GPUS_PER_NODE:
#   HOSTFILE=hostfile NODE_RANK=1 MASTER_ADDR=10.0.0.1 launch/multi_node.sh
#   NNODES=2 GPUS_PER_NODE=8 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/multi_node.sh
#
# Arguments go to `alpaca-ds launch` (--set KEY=VALUE, --dry-run). Run it again to resume. Environment:
#   RECIPE          launch/recipes/alpaca_7b.yaml
#   HOSTFILE        the hostfile; unset: NNODES x GPUS_PER_NODE in no-ssh mode
#   NNODES          2            (without HOSTFILE)
#   GPUS_PER_NODE   8            (without HOSTFILE)
#   NODE_RANK       this node's rank: no-ssh mode; unset with a HOSTFILE: pdsh/ssh mode
#   MASTER_ADDR     address of node 0 that every node reaches (pdsh mode asks node 0 with `hostname -I` if unset)
#   MASTER_PORT     29500, free on node 0
# NCCL knobs, set them here or in the environment (pdsh mode forwards every NCCL_* variable to all nodes):
#   NCCL_DEBUG=INFO             what NCCL chose (interfaces, IB/RoCE, rings); first stop when init hangs
#   NCCL_SOCKET_IFNAME=eth0     the interface nodes reach each other on (with several, e.g. ^docker0,lo)
#   NCCL_IB_HCA=mlx5_0,mlx5_1   which InfiniBand/RoCE adapters; NCCL_IB_DISABLE=1 falls back to TCP
#   NCCL_NET_GDR_LEVEL=PHB      GPUDirect RDMA distance; NCCL_P2P_DISABLE=1 for broken peer-to-peer
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1   a failed collective kills the job instead of hanging it
# More in launch/README.md. The alpaca-ds on PATH runs on every node (same paths on all, e.g. a shared disk).
set -euo pipefail
cd "$(dirname "$0")/.."   # recipes name their files relative to the repository root

RECIPE=${RECIPE:-launch/recipes/alpaca_7b.yaml}
MASTER_PORT=${MASTER_PORT:-29500}
args=(launch --config "$RECIPE" --master-port "$MASTER_PORT")
if [ -n "${HOSTFILE:-}" ]; then
  args+=(--hostfile "$HOSTFILE")
else
  args+=(--nodes "${NNODES:-2}" --gpus-per-node "${GPUS_PER_NODE:-8}")
fi
if [ -n "${NODE_RANK:-}" ]; then args+=(--node-rank "$NODE_RANK"); fi
if [ -n "${MASTER_ADDR:-}" ]; then args+=(--master-addr "$MASTER_ADDR"); fi

exec alpaca-ds "${args[@]}" "$@"
