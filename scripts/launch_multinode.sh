#!/usr/bin/env bash
# Multi-node training from a hostfile: run this same command on every node (or let pdsh/ssh do it).
#
#   scripts/launch_multinode.sh HOSTFILE CONFIG [dotted overrides...]
#
# HOSTFILE lists one node per line as "hostname slots=N" (DeepSpeed's format); the first node is the
# rendezvous master. Each node finds its own rank by looking its hostname up in the file.
# ACCELERATE_CONFIG (default configs/accelerate/zero2.yaml) picks DDP / ZeRO-2 / ZeRO-3.
# Example, 2 nodes x 8 GPUs:
#   printf "gpu-a slots=8\ngpu-b slots=8\n" > hosts
#   scripts/launch_multinode.sh hosts configs/experiments/pi0_scale.yaml --dataset.root=/data/mw10
set -euo pipefail
hostfile=${1:?usage: $0 HOSTFILE CONFIG [overrides...]}; config=${2:?usage: $0 HOSTFILE CONFIG [overrides...]}; shift 2
mapfile -t hosts < <(grep -v '^\s*#' "$hostfile" | awk 'NF {print $1}')
slots=$(grep -v '^\s*#' "$hostfile" | awk 'NF {split($2, a, "="); print a[2]; exit}')
slots=${slots:-8}
me=${NODE_NAME:-$(hostname)}
rank=-1
for i in "${!hosts[@]}"; do [[ ${hosts[$i]} == "$me" || ${hosts[$i]} == "$(hostname -s)" ]] && rank=$i; done
(( rank >= 0 )) || { echo "this host ($me) is not in $hostfile (set NODE_NAME)"; exit 2; }
nodes=${#hosts[@]}
exec accelerate launch \
  --config_file "${ACCELERATE_CONFIG:-configs/accelerate/zero2.yaml}" \
  --num_machines "$nodes" --num_processes $((nodes * slots)) --machine_rank "$rank" \
  --main_process_ip "${hosts[0]}" --main_process_port "${MASTER_PORT:-29500}" \
  -m vla train --config "$config" "$@"
