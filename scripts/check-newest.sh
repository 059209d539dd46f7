#!/usr/bin/env bash
# Does beamstream pass its tests with the newest releases pyproject.toml allows, rather than the versions
# requirements.lock pins? Resolves them as `scripts/lock.sh --upgrade` would, lists those that differ from
# the lock, installs them into a scratch venv (removed afterwards) and runs the fast part of the suite there
# (about half its time): all but the files of long end-to-end service and Slurm runs; the service's API, TLS,
# tokens, policy and relay are still exercised by the files that remain. Extra arguments go to pytest
# (`-x`, `-k wire`, or a test path to run instead of the fast part).
#
# Exit 0: the newest versions pass; `bash scripts/lock.sh --upgrade` takes them. Otherwise a new release
# breaks beamstream: fix beamstream, or bound the dependency in pyproject.toml, before refreshing the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

scratch="$(mktemp -d "${TMPDIR:-/tmp}/beamstream-newest.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

LOCK_FILE="$scratch/newest.lock" bash scripts/lock.sh >/dev/null
echo "newest allowed releases that requirements.lock does not pin yet:"
diff <(grep -E '^[A-Za-z0-9]' requirements.lock) <(grep -E '^[A-Za-z0-9]' "$scratch/newest.lock") \
    | sed -n 's/^> /  /p' | grep . || echo "  (none: the lock is up to date)"

python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q --disable-pip-version-check -c "$scratch/newest.lock" \
    -e '.[test,mpi,psana,nats,service,slurm,azimuthal]' 2> >(grep -v '^WARNING: Location' >&2)

slow=(tests/test_service.py tests/test_credentials.py tests/test_service_schema.py tests/test_remote.py
      tests/test_service_recovery.py tests/test_slurm.py)
if [ $# -gt 0 ] && [[ "${@: -1}" == tests/* ]]; then
    selection=()
else
    selection=(tests "${slow[@]/#/--ignore=}")
fi
"$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider "${selection[@]}" "$@"
