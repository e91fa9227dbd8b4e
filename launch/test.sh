#!/usr/bin/env bash
# Sets up (launch/setup.sh, a no-op when done) and runs the test suite; arguments go to pytest.
#
#   bash launch/test.sh
#   bash launch/test.sh -k horovod -x
#   VENV=.venv-cuda TF_FLAVOUR=cuda bash launch/test.sh   # the suite in a GPU-flavour environment
#
# VENV= (default .venv) names the environment set up and tested; the launch scripts the tests
# run use it too. setup.sh never deletes nor re-flavours an environment named by VENV=.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/setup.sh"
venv=${VENV:-.venv}
[[ $venv = /* ]] || venv=$root/$venv
export VENV=$venv
cd "$root"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
exec "$venv/bin/python" -m pytest "$@"
