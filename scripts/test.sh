#!/usr/bin/env bash
# Run the whole test suite: lint, then pytest. As root on Debian it first starts the project's real
# single-node Slurm (slurm/start_local_slurm.sh) and requires the Slurm tests to run; elsewhere, or
# with TWM_SLURM=0, they are skipped with a reason. Likewise it installs Debian's PostgreSQL (the tests
# start their own cluster on a free loopback port) and requires the PostgreSQL tests (TWM_POSTGRES=0:
# skipped). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# shellcheck disable=SC1091
. "$VENV/bin/activate"
ruff check .
if [ "${TWM_SLURM:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    bash slurm/start_local_slurm.sh
    trap 'bash slurm/stop_local_slurm.sh >/dev/null 2>&1 || true' EXIT
    export TWM_REQUIRE_SLURM=1
else
    echo "Slurm not started (needs root on Debian, TWM_SLURM=1): Slurm tests will be skipped"
fi
if [ "${TWM_POSTGRES:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql; }
        # the package may have started its default cluster; the tests run their own
        pg_lsclusters -h 2>/dev/null | while read -r version name _; do pg_ctlcluster "$version" "$name" stop || true; done
    fi
    export TWM_REQUIRE_POSTGRES=1
else
    echo "PostgreSQL not installed (needs root on Debian, TWM_POSTGRES=1): PostgreSQL tests will be skipped"
fi
python -m pytest -q --durations=15 "$@"
