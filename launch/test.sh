#!/usr/bin/env bash
# Sets up (launch/setup.sh, a no-op when done) and runs the test suite; arguments go to pytest.
#
#   bash launch/test.sh
#   bash launch/test.sh -k horovod -x
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/setup.sh"
cd "$root"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
exec "$root/.venv/bin/python" -m pytest "$@"
