#!/usr/bin/env bash
# Create .venv and install beamstream with every extra the tests use (psana, MPI, NATS).
# Idempotent: a second run only checks. Needs Debian's libkrb5-dev for psana (installed when root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s libkrb5-dev >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libkrb5-dev >/dev/null
    else
        echo "psana needs Debian's libkrb5-dev: sudo apt-get install libkrb5-dev" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,mpi,psana,nats]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import beamstream, psana, mpi4py, nats"
