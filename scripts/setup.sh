#!/usr/bin/env bash
# Create .venv and install beamstream with every extra the tests use (psana, MPI, NATS, the service, Slurm,
# pyFAI for the azimuthal step, numba for peakfinder8, cbor2 and bitshuffle for simplon; PyTorch as below),
# every package at the version requirements.lock pins (refresh it with scripts/lock.sh), so that a new
# release of a dependency changes nothing here until the lock is refreshed. Idempotent: a second run only
# checks. Needs Debian's libkrb5-dev for psana, hdf5-tools (HDF5 1.10's h5ls/h5dump, which the tests
# use to check that written files open in older HDF5) and chromium (the browser tests/test_pages.py drives
# through the playwright package; never `playwright install`); installed when root.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for package in libkrb5-dev hdf5-tools chromium; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "beamstream's tests need Debian's ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[test,mpi,psana,nats,service,slurm,azimuthal,crystallography,simplon]' \
    2> >(grep -v '^WARNING: Location' >&2)   # this machine's pip.conf names find-links folders it may lack
# beamstream[torch]: PyTorch's CPU build, from this machine's disk (its wheels folder); asked for by its local
# version, so that no other torch (PyPI's is a CUDA build of several GB) is ever downloaded. Without it,
# tests/test_torch.py is skipped, saying so.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q --disable-pip-version-check --only-binary :all: -c requirements.lock 'torch==2.13.0+cpu' \
        2> >(grep -v '^WARNING: Location' >&2) \
        || echo "setup.sh: PyTorch's CPU build (torch 2.13.0+cpu) is not to be had here: beamstream.torch's tests will be skipped" >&2
fi
# beamstream's own modules compiled now: an editable install leaves them to the first import, and where
# PYTHONDONTWRITEBYTECODE is set (this machine sets it) every job would compile them again, 0.26 s of CPU each
.venv/bin/python -m compileall -q src/beamstream
.venv/bin/python -c "import beamstream, psana, mpi4py, nats, fastapi, fastapi_offline, sqlalchemy, psycopg, psij, playwright, karabo_bridge, pyFAI, numba, cbor2, bitshuffle, dectris.compression"
