# Sourced by the launch scripts: $root on PYTHONPATH and $python, the interpreter of the
# environment launch/setup.sh made (VENV=, default .venv); one error line and exit 2 without it.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
venv=${VENV:-.venv}
[[ $venv = /* ]] || venv=$root/$venv
python="$venv/bin/python"
if [[ ! -x $python ]]; then
  echo "error: $python not found: run bash launch/setup.sh first" >&2
  exit 2
fi
