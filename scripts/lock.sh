#!/usr/bin/env bash
# Write requirements.lock (or $LOCK_FILE): every direct and transitive dependency of beamstream and all its
# extras (but torch: see below), pinned, for this kind of machine (Linux x86_64, CPython 3.11). scripts/setup.sh,
# and so .ci/run, install through requirements.lock; pyproject.toml keeps its ranges for users' own environments.
#
#   bash scripts/lock.sh                          # pins what pyproject.toml newly needs, keeps the others
#   bash scripts/lock.sh --upgrade                # the newest versions pyproject.toml allows, everywhere
#   bash scripts/lock.sh --upgrade-package NAME   # just that one
#
# scripts/check-newest.sh tells first whether the newest versions pass the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

lock="${LOCK_FILE:-requirements.lock}"
tools="${TMPDIR:-/tmp}/beamstream-lock-tools"
[ -x "$tools/bin/uv" ] || { python3 -m venv "$tools" && "$tools/bin/pip" install -q --disable-pip-version-check 'uv>=0.5'; }
# every extra but torch: setup.sh installs the CPU build on this machine's disk; a pin here would be PyPI's CUDA build
extras=$(python3 -c 'import tomllib; print(" ".join(f"--extra {name}" for name in tomllib.load(open("pyproject.toml", "rb"))
                     ["project"]["optional-dependencies"] if name != "torch"))')
# shellcheck disable=SC2086
"$tools/bin/uv" pip compile pyproject.toml $extras --python-version 3.11 --quiet \
    --custom-compile-command 'bash scripts/lock.sh' -o "$lock" "$@"
echo "$lock: $(grep -c '==' "$lock") pinned packages"
