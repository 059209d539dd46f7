#!/usr/bin/env bash
# A real single-node Slurm cluster on this Debian machine (run as root), for beamstream's request
# service, which runs streams as Slurm jobs through PSI/J, and for its tests (tests/test_slurm.py).
#
#   bash scripts/slurm.sh up      install Debian's slurm-wlm and munge if missing, write
#                                 /etc/slurm/slurm.conf, start munged, slurmctld and slurmd (each only
#                                 if not running), then wait until the node is idle and a job runs
#   bash scripts/slurm.sh down    stop slurmd, slurmctld and munged
#   bash scripts/slurm.sh status  say which daemons run, and what sinfo says
#
# `up` is idempotent: on a running cluster it only checks that a job runs. It fails (exit 1, with the
# daemon logs' tail) if the cluster is not up within $SLURM_UP_TIMEOUT seconds (60). State, pid files
# and logs live in $BEAMSTREAM_SLURM_DIR (/var/lib/beamstream-slurm). See docs/slurm.md.
set -euo pipefail

DIR=${BEAMSTREAM_SLURM_DIR:-/var/lib/beamstream-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# Written by beamstream's scripts/slurm.sh"
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
NODE=$(hostname -s)

say() { echo "slurm.sh: $*" >&2; }

pidfile() { if [ "$1" = munged ]; then echo /run/munge/munged.pid; else echo "$DIR/$1.pid"; fi; }

running() {  # running DAEMON: its pid file names a live process of that name
    local pid
    pid=$(cat "$(pidfile "$1")" 2>/dev/null) && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null; }

node_up() {  # the node takes jobs (idle, or busy with some); a drained node is resumed
    case "$(node_state)" in
        idle | mix | alloc | comp) return 0 ;;
        drain | drng) scontrol update NodeName="$NODE" State=RESUME ;;
    esac
    return 1
}

job_runs() { timeout $((deadline > SECONDS ? deadline - SECONDS : 1)) srun -N1 true; }

fail() {
    say "$*"
    for log in "$DIR"/{munged,slurmctld,slurmd}.log; do
        [ -f "$log" ] && { echo "--- tail of $log" >&2; tail -n 20 "$log" >&2; }
    done
    exit 1
}

wait_until() {  # wait_until WHAT COMMAND...: poll COMMAND until it succeeds or the deadline passes
    local what=$1
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.5
    done
}

need_root() {
    [ "$(id -u)" = 0 ] && return
    say "'$1' needs root (it installs Debian packages and runs munged, slurmctld and slurmd as root):"
    say "    sudo bash $0 $1"
    exit 1
}

write_config() {  # (re)write slurm.conf if it differs; config_changed=1 if it did
    local cpus mem_mb new
    # a stream takes one CPU for its buffer and one per producer rank, and mostly waits on I/O: a small
    # machine is declared with 8 CPUs (Slurm then runs more tasks than cores), a larger one with nproc
    cpus=${BEAMSTREAM_SLURM_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    new=$(cat <<EOF
$MARK: a single-node cluster, all daemons as root.
ClusterName=beamstream
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
EnforcePartLimits=ALL
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
    config_changed=0
    [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new" ] && return
    mkdir -p "$(dirname "$CONF")"
    echo "$new" >"$CONF"
    config_changed=1
}

up() {
    need_root up
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        say "$CONF exists and was not written by this script: move it away to use this cluster"
        exit 1
    fi
    local missing=()
    for package in slurm-wlm munge; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    deadline=$((SECONDS + TIMEOUT))
    mkdir -p "$DIR/state" "$DIR/spool"

    write_config
    if [ $config_changed = 1 ] && { running slurmctld || running slurmd; }; then
        say "$CONF changed: restarting slurmctld and slurmd"
        stop slurmd
        stop slurmctld
    fi

    if ! munge_works; then
        [ -f /etc/munge/munge.key ] || mungekey -c
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        running munged || munged --force --log-file="$DIR/munged.log"
        wait_until "munged (munge -n | unmunge)" munge_works
    fi
    running slurmctld || slurmctld
    wait_until "slurmctld (scontrol ping)" scontrol ping
    running slurmd || slurmd
    # ReturnToService=2 makes a node that registers with a valid config idle by itself.
    wait_until "node $NODE to take jobs (sinfo -n $NODE)" node_up
    if [ "$(node_state)" = alloc ]; then
        say "up: node $NODE is up, all its CPUs busy with jobs (not checking that a new job runs)"
    else
        wait_until "a job to run (srun -N1 true)" job_runs
        say "up: node $NODE $(node_state) ($(sinfo -h -o %c) CPUs declared, $(nproc) here), jobs run; logs in $DIR"
    fi
}

stop() {  # stop DAEMON: SIGTERM via its pid file, then wait until it has exited
    local pid
    running "$1" || return 0
    pid=$(cat "$(pidfile "$1")")
    kill "$pid"
    local deadline=$((SECONDS + 30))
    while [ -e "/proc/$pid" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { say "$1 (pid $pid) did not exit on SIGTERM"; exit 1; }
        sleep 0.2
    done
}

down() {
    need_root down
    stop slurmd
    stop slurmctld
    stop munged
    say "down: slurmd, slurmctld and munged stopped"
}

status() {
    local daemon code=0
    for daemon in munged slurmctld slurmd; do
        if running "$daemon"; then
            echo "$daemon: running (pid $(cat "$(pidfile "$daemon")"))"
        else
            echo "$daemon: not running"
            code=3
        fi
    done
    if [ $code = 0 ]; then sinfo; fi
    return $code
}

case "${1:-}" in
    up | down | status) "$1" ;;
    *) echo "usage: bash $0 up|down|status" >&2; exit 2 ;;
esac
