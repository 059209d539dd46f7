#!/usr/bin/env bash
# A three-server NATS cluster with JetStream on loopback ports, beside the machine's own server on
# 127.0.0.1:4222 (which it leaves alone), for a replicated beamstream stream and its failover test
# (tests/test_nats_cluster.py; docs/nats-backend.md, "A NATS cluster").
#
#   bash scripts/nats-cluster.sh up [DIR]       write DIR/n{1,2,3}.conf, start the three servers (each
#                                               only if not running), wait until every one answers and
#                                               JetStream has a meta leader; print the client URL list
#   bash scripts/nats-cluster.sh down [DIR]     kill the servers and remove DIR (only a folder `up` made)
#   bash scripts/nats-cluster.sh status [DIR]   say which servers run, and the JetStream meta leader
#   bash scripts/nats-cluster.sh kill N [DIR]   kill -9 server N (1-3), as a crash would
#   bash scripts/nats-cluster.sh start N [DIR]  start server N again on its store (it catches up from
#                                               the others) and wait until it answers
#   bash scripts/nats-cluster.sh urls [DIR]     print the client URL list (nats://127.0.0.1:P1,…)
#
# Server N (1-3) is named nN and listens for clients on 127.0.0.1:$((CLIENT_PORT + N - 1)), for its
# routes on ROUTE_PORT + N - 1 and for HTTP monitoring (/healthz, /jsz) on HTTP_PORT + N - 1; the
# ports are taken from $NATS_CLUSTER_CLIENT_PORT (14222), $NATS_CLUSTER_ROUTE_PORT (16222) and
# $NATS_CLUSTER_HTTP_PORT (18222) at `up` and kept in the servers' configuration files after that.
# DIR (default $NATS_CLUSTER_DIR, else /tmp/beamstream-nats-cluster) holds the configuration files,
# the JetStream stores (DIR/nN/), pid files and logs (DIR/nN.log). `up` and `start` fail (exit 1,
# with the logs' tail) if the servers are not ready within $NATS_CLUSTER_UP_TIMEOUT seconds (30).
set -euo pipefail

SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
TIMEOUT=${NATS_CLUSTER_UP_TIMEOUT:-30}
SERVERS=(1 2 3)
MARK="# Written by beamstream's scripts/nats-cluster.sh"

say() { echo "nats-cluster.sh: $*" >&2; }

usage() {
    say "usage: $0 up|down|status|urls [DIR] | kill|start N [DIR]"
    exit 2
}

conf() { echo "$DIR/n$1.conf"; }

setting() {  # setting N KEY: the port of top-level KEY ("listen", "http") in server N's configuration file
    local line
    line=$(grep -E "^$2: " "$(conf "$1")")
    echo "${line##*:}"
}

client_port() { setting "$1" listen; }
http_port() { setting "$1" http; }

alive() {  # alive PID: PID is a nats-server that has not exited (a zombie has)
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = nats-server ] && ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$1/stat" 2>/dev/null
}

running() {  # running N: server N's pid file names a live nats-server
    local pid
    pid=$(cat "$DIR/n$1.pid" 2>/dev/null) && alive "$pid"
}

monitor() { curl -fsS --max-time 2 "http://127.0.0.1:$(http_port "$1")$2"; }

answers() { monitor "$1" /healthz >/dev/null; }

meta_leader() {  # meta_leader N: the JetStream meta leader server N knows of (empty while there is none)
    monitor "$1" /jsz | python3 -c 'import json, sys; print(json.load(sys.stdin).get("meta_cluster", {}).get("leader", ""))'
}

fail() {
    say "$*"
    for n in "${SERVERS[@]}"; do
        [ -f "$DIR/n$n.log" ] && { echo "--- tail of $DIR/n$n.log" >&2; tail -n 20 "$DIR/n$n.log" >&2; }
    done
    exit 1
}

wait_until() {  # wait_until WHAT COMMAND...: poll COMMAND until it succeeds or the deadline passes
    local what=$1
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

has_meta_leader() { [ -n "$(meta_leader "$1")" ]; }

write_conf() {  # write_conf N: server N's configuration file
    local n=$1 routes="" m
    for m in "${SERVERS[@]}"; do
        routes+="nats-route://127.0.0.1:$((ROUTE_PORT + m - 1)), "
    done
    cat >"$(conf "$n")" <<EOF
$MARK
server_name: n$n
listen: 127.0.0.1:$((CLIENT_PORT + n - 1))
http: 127.0.0.1:$((HTTP_PORT + n - 1))
pid_file: "$DIR/n$n.pid"
log_file: "$DIR/n$n.log"
max_payload: 1MB
jetstream {
  store_dir: "$DIR/n$n"
  max_memory_store: 256MB
  max_file_store: 4GB
}
cluster {
  name: beamstream
  listen: 127.0.0.1:$((ROUTE_PORT + n - 1))
  routes: [${routes%, }]
}
EOF
}

start() {  # start N: start server N in the background (its own session, so it outlives this script)
    running "$1" && return
    setsid "$SERVER" -c "$(conf "$1")" </dev/null >>"$DIR/n$1.log" 2>&1 &
}

urls() {
    local list="" n
    for n in "${SERVERS[@]}"; do
        list+="nats://127.0.0.1:$(client_port "$n"),"
    done
    echo "${list%,}"
}

need_cluster() { [ -f "$(conf 1)" ] || { say "no cluster in $DIR: run '$0 up $DIR' first"; exit 1; }; }

server_number() {
    case "${1:-}" in
        1 | 2 | 3) echo "$1" ;;
        *) say "name a server: 1, 2 or 3 (not '${1:-}')"; exit 2 ;;
    esac
}

command=${1:-}
[ -n "$command" ] || usage
case "$command" in
    kill | start) N=$(server_number "${2:-}"); DIR=${3:-} ;;
    up | down | status | urls) DIR=${2:-} ;;
    *) usage ;;
esac
DIR=${DIR:-${NATS_CLUSTER_DIR:-/tmp/beamstream-nats-cluster}}
deadline=$((SECONDS + TIMEOUT))

case "$command" in
    up)
        [ -x "$SERVER" ] || { say "no nats-server at $SERVER (install Debian's nats-server, or set NATS_SERVER)"; exit 1; }
        CLIENT_PORT=${NATS_CLUSTER_CLIENT_PORT:-14222}
        ROUTE_PORT=${NATS_CLUSTER_ROUTE_PORT:-16222}
        HTTP_PORT=${NATS_CLUSTER_HTTP_PORT:-18222}
        mkdir -p "$DIR"
        for n in "${SERVERS[@]}"; do
            [ -f "$(conf "$n")" ] || write_conf "$n"
            start "$n"
        done
        for n in "${SERVERS[@]}"; do
            wait_until "server n$n to answer on port $(client_port "$n")" answers "$n"
        done
        for n in "${SERVERS[@]}"; do
            wait_until "server n$n to know a JetStream meta leader" has_meta_leader "$n"
        done
        urls
        ;;
    down)
        for n in "${SERVERS[@]}"; do
            if running "$n"; then kill -9 "$(cat "$DIR/n$n.pid")"; fi
        done
        for n in "${SERVERS[@]}"; do
            while running "$n"; do sleep 0.05; done
        done
        if [ -d "$DIR" ]; then  # only a folder `up` made: its configuration files carry the mark
            grep -qs "^$MARK" "$(conf 1)" || { say "$DIR holds no cluster of this script: not removed"; exit 1; }
            rm -rf "$DIR"
        fi
        ;;
    status)
        need_cluster
        up=0
        for n in "${SERVERS[@]}"; do
            if running "$n"; then
                echo "n$n: running (pid $(cat "$DIR/n$n.pid"), clients on port $(client_port "$n"))"
                up=$((up + 1))
                leader=$(meta_leader "$n" 2>/dev/null || true)
            else
                echo "n$n: not running"
            fi
        done
        echo "JetStream meta leader: ${leader:-none}"
        [ "$up" -eq ${#SERVERS[@]} ]
        ;;
    urls) need_cluster; urls ;;
    kill)
        need_cluster
        running "$N" || { say "server n$N is not running"; exit 1; }
        pid=$(cat "$DIR/n$N.pid")
        kill -9 "$pid"
        while alive "$pid"; do sleep 0.02; done
        ;;
    start)
        need_cluster
        start "$N"
        wait_until "server n$N to answer on port $(client_port "$N")" answers "$N"
        wait_until "server n$N to know a JetStream meta leader" has_meta_leader "$N"
        ;;
esac
