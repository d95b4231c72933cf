#!/usr/bin/env bash
# Run the whole test suite: lint, then pytest. As root on Debian it first starts the project's real
# single-node Slurm (slurm/start_local_slurm.sh) and requires the Slurm tests to run; elsewhere, or
# with TWM_SLURM=0, they are skipped with a reason. Extra arguments go to pytest.
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
python -m pytest -q --durations=15 "$@"
