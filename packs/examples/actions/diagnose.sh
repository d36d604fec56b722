#!/usr/bin/env bash
# Diagnostics for an alert: prints a JSON summary that rules and workflows
# can read as result.stdout.
set -eu
host="$1"
check="${2:-disk}"
load=$(cut -d' ' -f1 /proc/loadavg)
disk=$(df -P / | awk 'NR==2 {print $5}')
mem=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
printf '{"host": "%s", "check": "%s", "load1": %s, "root_disk_used": "%s", "mem_available_kb": %s}\n' \
  "$host" "$check" "$load" "$disk" "$mem"
