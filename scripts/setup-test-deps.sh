#!/usr/bin/env bash
# System packages the test suite drives for real: Debian's chromium (the browser test, through
# Playwright, which never downloads a browser), PostgreSQL (a shared Optuna study on a real
# database server) and SLURM with munge (ablations as job arrays). Installed only when missing.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
# a one-node SLURM cluster (Debian's Slurm 22.05 and munge), started by tests/test_launch.py
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v munged >/dev/null 2>&1 || need+=(munge)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "setup: installing ${need[*]} for the tests"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
