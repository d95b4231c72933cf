#!/usr/bin/env bash
# slurm/stop_local_slurm.sh - stop the daemons started by slurm/start_local_slurm.sh, by the
# PIDs in their own pidfiles (never by process name), in reverse start order.
#   SLURM_CANCEL_JOBS=1  scancel every job first (default 1; 0 keeps jobs in the
#                        saved state so they come back after a restart)
#   SLURM_PURGE=1        also drop the accounting database and delete Slurm
#                        state/spool/logs so the next start is from scratch (default 0)
set -uo pipefail
CANCEL=${SLURM_CANCEL_JOBS:-1}
PURGE=${SLURM_PURGE:-0}
log() { printf '[stop_local_slurm %s] %s\n' "$(date +%T)" "$*"; }

pid_of() {  # PIDFILE COMM -> echo pid if alive and really COMM
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ] && echo "$pid"
}
stop_one() {  # PIDFILE COMM
    local pid i
    if ! pid=$(pid_of "$1" "$2"); then log "$2 not running"; return 0; fi
    kill -TERM "$pid"
    for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$2 ($pid) ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$pid"; fi
    rm -f "$1"
    log "$2 stopped (pid $pid)"
}

if [ "$CANCEL" = 1 ] && pid_of /run/slurmctld.pid slurmctld >/dev/null; then
    ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
        log "cancelling jobs: $ids"
        scancel $ids 2>/dev/null
        for i in $(seq 1 100); do [ -z "$(squeue -h -t R,CG -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
fi
stop_one /run/slurmd.pid slurmd
stop_one /run/slurmctld.pid slurmctld
stop_one /run/slurmdbd.pid slurmdbd
if [ "$PURGE" = 1 ] && pid_of /run/mysqld/mysqld.pid mariadbd >/dev/null; then
    mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db" && log "dropped database slurm_acct_db"
fi
stop_one /run/mysqld/mysqld.pid mariadbd
stop_one /run/munge/munged.pid munged
rm -f /run/fakegpu[0-9]*   # fake GPU device nodes made by start_local_slurm.sh (if any)

if [ "$PURGE" = 1 ]; then
    log "purging Slurm state and logs"
    rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* /var/log/slurm/*
fi
log "done"
