#!/usr/bin/env bash
# Hosts apart, on one machine (run as root): network namespaces joined by a bridge, each a "host" with its own
# address (10.231.0.0/24, inside the namespaces only) and name (NAME.beamstream.test, in every host's /etc/hosts),
# to run beamstream's service, buffer, producers and consumers each on its own host (tests/hosts.py, which
# tests/test_hosts_apart.py uses; docs/service-settings.md, last section).
#
#   bash scripts/hosts.sh up [NAME...]   make the hosts (default: svc buf prod cons) and print their tag,
#                                         addresses, names and the command that runs something on each
#   bash scripts/hosts.sh down TAG       kill what still runs on them, remove their namespaces and /etc/netns files
#   bash scripts/hosts.sh list           the tags of hosts made and not yet removed
#
# The root namespace is not changed: the bridge is in a namespace of its own (bs-TAG-sw). Run a command on a host
# with `ip netns exec bs-TAG-NAME COMMAND` (as the service's buffer_launcher or producers_launcher too).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

case "${1:-}" in
    up) shift; [ $# -gt 0 ] || set -- svc buf prod cons; exec "$PYTHON" tests/hosts.py up "$@" ;;
    down) [ $# -eq 2 ] || { echo "usage: $0 down TAG" >&2; exit 2; }; exec "$PYTHON" tests/hosts.py down "$2" ;;
    list) ip netns list | sed -n 's/^bs-\([0-9a-f]*\)-sw.*/\1/p' ;;
    *) echo "usage: $0 up [NAME...] | down TAG | list" >&2; exit 2 ;;
esac
