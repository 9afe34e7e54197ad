#!/usr/bin/env bash
# A SLURM cluster on this one machine (munged, slurmctld, and one slurmd per simulated node) to try
# launch/slurm.sbatch without a cluster. Needs root and Debian's slurm-wlm (apt-get install slurm-wlm).
# For trials and tests, not for production.
#
#   eval "$(NODES=2 launch/slurm_local.sh start)"     # starts the daemons, prints `export SLURM_CONF=...`
#   RECIPE=launch/recipes/tiny.yaml GPUS_PER_NODE=1 DS_ACCELERATOR=cpu MASTER_ADDR=127.0.0.1 \
#     sbatch --wait --nodes 2 --gpus-per-node=0 launch/slurm.sbatch
#   launch/slurm_local.sh stop
#
# Nodes are named HOST-0, HOST-1, ... (all this host, each slurmd on its own port); they do not resolve as
# hostnames, so give the sbatch script MASTER_ADDR=127.0.0.1. The cores and memory are split between them.
# Everything lives in SLURM_LOCAL_DIR (/tmp/alpaca-ds-slurm): config, spool, pid files, logs and a munged of
# its own; the ports are picked free, so several can run side by side (concurrent test runs).
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/alpaca-ds-slurm}
CONF=$DIR/slurm.conf
NODES=${NODES:-1}

stop() {
  for pidfile in "$DIR"/slurmd-*.pid "$DIR"/slurmctld.pid "$DIR"/munge/munged.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  done
}

free_ports() {  # N TCP ports free on this machine now
  "${PYTHON:-python3}" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

start() {
  command -v slurmctld >/dev/null || { echo "slurmctld is not installed: apt-get install slurm-wlm" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "$0 start needs root (the daemons run as root here)" >&2; exit 1; }
  stop
  host=$(hostname -s)
  cpus=$(( $(nproc) / NODES )); [ "$cpus" -ge 1 ] || cpus=1
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 / NODES ))
  mkdir -p "$DIR/ctld" "$DIR/munge"
  read -r -a ports <<< "$(free_ports $((NODES + 1)))"
  cat > "$CONF" <<CONF
ClusterName=alpacads
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${ports[0]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  for i in $(seq 0 $((NODES - 1))); do
    echo "NodeName=$host-$i NodeHostname=$host NodeAddr=127.0.0.1 Port=${ports[$((i + 1))]} CPUs=$cpus" \
         "RealMemory=$memory State=UNKNOWN" >> "$CONF"
  done
  # munge authenticates every SLURM message: a munged of our own, on its own socket, with Debian's key
  chown munge:munge "$DIR/munge"
  runuser -u munge -- /usr/sbin/munged --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  export SLURM_CONF=$CONF
  slurmctld -f "$CONF"
  for i in $(seq 0 $((NODES - 1))); do slurmd -f "$CONF" -N "$host-$i"; done
  for _ in $(seq 1 120); do
    if [ "$(sinfo -h -t idle -o %D 2>/dev/null || true)" = "$NODES" ]; then
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "SLURM did not come up with $NODES idle node(s); see $DIR/*.log" >&2
  stop
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: [NODES=N] $0 start | $0 stop" >&2; exit 2 ;;
esac
