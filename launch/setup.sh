#!/usr/bin/env bash
# Makes everything the project needs, from a fresh machine: a virtual environment (.venv) with
# the pinned packages of requirements.txt, and Horovod 0.28.1 built from its sdist against the
# pinned TensorFlow, patched from launch/patches/. Horovod always gets Gloo; on a GPU machine
# also NCCL when a CUDA 12 nvcc is found, else it says so and the set-up still completes.
#
# Idempotent: the Horovod wheel is built once and cached outside the repo, keyed by everything
# that changes the binary; a finished set-up leaves a stamp of its inputs in the environment, so
# a rerun with the same pins, patch and script returns at once.
#
#   bash launch/setup.sh
#   VENV=.venv-cuda TF_FLAVOUR=cuda bash launch/setup.sh   # a second environment beside .venv
#
# Knobs (environment): VENV (default .venv; relative to the repository), PYTHON (default
# python3.11), TF_FLAVOUR (auto|cpu|cuda), HOROVOD_NCCL (auto|0|1), CUDA_HOME,
# AGENET_CACHE (default ~/.cache/agenet), BUILD_JOBS (default: cores).
# An environment named by VENV= is never deleted nor given the other flavour.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-.venv}
[[ $venv = /* ]] || venv=$root/$venv
python=${PYTHON:-python3.11}
cache=${AGENET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agenet}
horovod_version=0.28.1
cuda_major=12  # tensorflow[and-cuda]==2.21.0 installs the nvidia-*-cu12 wheels
default_cuda_home=/usr/local/cuda  # where NVIDIA's installers put the toolkit
patch_file=$root/launch/patches/horovod-0.28.1-tf2.16.patch

say() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

recorded_flavour() {
  cat "$venv/agenet-flavour" 2>/dev/null || true
}

pick_flavour() {
  case "${TF_FLAVOUR:-auto}" in
    cpu|cuda) echo "$TF_FLAVOUR" ;;
    auto)
      if [ -n "${VENV:-}" ] && [ -n "$(recorded_flavour)" ]; then
        recorded_flavour  # an environment named by VENV= keeps the flavour it was made with
      elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo cuda
      else
        echo cpu
      fi ;;
    *) die "TF_FLAVOUR must be auto, cpu or cuda, not '$TF_FLAVOUR'" ;;
  esac
}

# requirements.txt names tensorflow-cpu; the CUDA flavour is the same version of tensorflow[and-cuda].
requirements_for() {
  local flavour=$1 out=$2
  if [ "$flavour" = cuda ]; then
    sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' "$root/requirements.txt" > "$out"
  else
    cp "$root/requirements.txt" "$out"
  fi
}

make_venv() {
  local flavour=$1
  command -v "$python" >/dev/null 2>&1 || die "$python not found: install Python 3.11 or set PYTHON=/path/to/python3.11"
  local version
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$version" = 3.11 ] || say "warning: $python is Python $version; the pins are tested with 3.11"
  # A venv of the other flavour would end up with both TensorFlow builds: start it again,
  # unless VENV= named it (then it may be the one environment its owner relies on).
  local recorded
  recorded=$(recorded_flavour)
  if [ -n "$recorded" ] && [ "$recorded" != "$flavour" ]; then
    [ -z "${VENV:-}" ] || die "$venv is a $recorded environment and TF_FLAVOUR=$flavour asks for $flavour: name another one with VENV= (nothing was changed)"
    say "the existing $venv is $recorded; making a new one for $flavour"
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
  fi
  echo "$flavour" > "$venv/agenet-flavour"
}

install_requirements() {
  local flavour=$1 reqs
  reqs=$(mktemp)
  requirements_for "$flavour" "$reqs"
  say "installing the pinned packages (TensorFlow flavour: $flavour)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
  rm -f "$reqs"
}

tf_version() {
  "$venv/bin/python" - <<'EOF'
import importlib.metadata as m
for name in ("tensorflow-cpu", "tensorflow"):
    try:
        print(m.version(name)); break
    except m.PackageNotFoundError:
        pass
EOF
}

# The CUDA toolkit that Horovod's NCCL build compiles its kernels with: the first nvcc of CUDA
# $cuda_major (the release of the nvidia-*-cu12 wheels TensorFlow runs on) in CUDA_HOME, on the
# PATH or in $default_cuda_home. Prints its home, or nothing and, on stderr, what was found
# instead.
cuda_home_for_nccl() {
  local nvcc release top found=""
  for nvcc in ${CUDA_HOME:+"$CUDA_HOME/bin/nvcc"} "$(command -v nvcc || true)" "$default_cuda_home/bin/nvcc"; do
    [ -n "$nvcc" ] && [ -x "$nvcc" ] || continue
    release=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)
    if [ "${release%%.*}" = "$cuda_major" ]; then
      # nvcc names its toolkit's home (TOP): /usr/local/bin/nvcc may be a script running another.
      top=$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
      (cd "${top:-$(dirname "$nvcc")/..}" && pwd)
      return
    fi
    found="$found, $nvcc is CUDA ${release:-of unknown release}"
  done
  echo "no CUDA $cuda_major nvcc in CUDA_HOME, on the PATH or in $default_cuda_home${found:+ (${found#, })}" >&2
}

# 1 to build Horovod with NCCL: asked for (HOROVOD_NCCL=1), or a GPU machine with a CUDA 12
# toolkit (cuda_home non-empty).
want_nccl() {
  local flavour=$1 cuda_home=$2
  case "${HOROVOD_NCCL:-auto}" in
    0|1) echo "$HOROVOD_NCCL" ;;
    auto) [ "$flavour" = cuda ] && [ -n "$cuda_home" ] && echo 1 || echo 0 ;;
    *) die "HOROVOD_NCCL must be auto, 0 or 1" ;;
  esac
}

# Says which collectives Horovod gets on a GPU machine, and stops early (before gigabytes of
# downloads) when NCCL was asked for and cannot be built.
say_collectives() {
  local flavour=$1 nccl=$2 cuda_home=$3 why=$4
  if [ "$nccl" = 1 ]; then
    [ -n "$cuda_home" ] || die "HOROVOD_NCCL=1 needs a CUDA $cuda_major toolkit: $why; install it or set CUDA_HOME"
    say "Horovod: NCCL collectives, kernels compiled with $cuda_home/bin/nvcc"
  elif [ "$flavour" = cuda ] && [ "${HOROVOD_NCCL:-auto}" = auto ]; then
    say "Horovod: Gloo collectives (GPU tensors go through host memory; tf.distribute still uses NCCL) because $why; for Horovod with NCCL install the CUDA $cuda_major toolkit (nvcc; e.g. an nvidia/cuda:$cuda_major.x-devel image) and run this again"
  fi
}

ensure_compiler() {
  local headers
  headers=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  command -v "${CXX:-g++}" >/dev/null 2>&1 && command -v make >/dev/null 2>&1 \
    && [ -f "$headers/Python.h" ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing a C++ compiler, make and Python's headers with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ make python3-dev
    [ -f "$headers/Python.h" ] || die "Python.h is still missing from $headers: install the development headers of $python"
  else
    die "Horovod is compiled from source and needs a C++ compiler, make and Python's headers ($headers/Python.h). Install them, e.g. 'sudo apt-get install -y g++ make python3-dev' (Debian/Ubuntu) or 'sudo dnf install -y gcc-c++ make python3-devel', then run this again."
  fi
}

# Where the nvidia-nccl wheel (pulled in by tensorflow[and-cuda]) keeps NCCL; Horovod's CMake
# looks for libnccl.so, which the wheel ships only as libnccl.so.2.
nccl_home() {
  local home
  home=$("$venv/bin/python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))') \
    || die "NCCL was asked for but the nvidia-nccl wheel is not installed"
  [ -e "$home/lib/libnccl.so" ] || ln -s libnccl.so.2 "$home/lib/libnccl.so"
  echo "$home"
}

build_horovod_wheel() {
  local nccl=$1 cuda_home=$2 dest=$3 work
  ensure_compiler
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/launch/build-requirements.txt"
  local started=$SECONDS
  work=$(mktemp -d)
  say "building Horovod $horovod_version from its sdist (about 4 minutes on 2 cores)"
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: "horovod==$horovod_version" -d "$work"
  tar -xzf "$work/horovod-$horovod_version.tar.gz" -C "$work"
  git -C "$work/horovod-$horovod_version" apply "$patch_file"
  local -a build_env=(
    PATH="$venv/bin:$PATH" MAKEFLAGS="-j${BUILD_JOBS:-$(nproc)}" CMAKE_POLICY_VERSION_MINIMUM=3.5
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1)
  if [ "$nccl" = 1 ]; then
    build_env[0]="PATH=$cuda_home/bin:$venv/bin:$PATH"
    build_env+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED
      HOROVOD_NCCL_HOME="$(nccl_home)" HOROVOD_CUDA_HOME="$cuda_home")
  fi
  env "${build_env[@]}" "$venv/bin/python" -m pip wheel --no-build-isolation --no-deps \
    --disable-pip-version-check -w "$work/dist" "$work/horovod-$horovod_version" > "$work/build.log" 2>&1 \
    || { tail -n 60 "$work/build.log" >&2; die "the Horovod build failed; full log: $work/build.log"; }
  # Publish the wheel with one rename, so that an interrupted build never leaves a cache entry.
  mkdir -p "$(dirname "$dest")"
  local staged
  staged=$(mktemp -d "$dest.partial.XXXXXX")
  cp "$work"/dist/horovod-*.whl "$staged/"
  mv -T "$staged" "$dest" 2>/dev/null || rm -rf "$staged"  # another setup published it first
  rm -rf "$work"
  say "built and cached the Horovod wheel in $(( SECONDS - started )) s: $dest"
}

# Names the cached wheel by everything that changes the binary, so that a wheel built for one
# machine (a CPU TensorFlow, say) is never installed on another (a GPU one).
wheel_key() {
  local flavour=$1 nccl=$2 cuda_home=${3:-} tf py cuda=""
  tf=$(tf_version)
  py=$("$venv/bin/python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
  [ "$nccl" = 0 ] || cuda=-cuda$("$cuda_home/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -n 1)
  echo "horovod-$horovod_version-tf$tf-$flavour-nccl$nccl$cuda-py$py-$(uname -m)-patch$(sha256sum "$patch_file" | cut -c1-12)"
}

install_horovod() {
  local flavour=$1 nccl=$2 cuda_home=$3 key dest
  key=$(wheel_key "$flavour" "$nccl" "$cuda_home")
  if [ -f "$venv/agenet-horovod" ] && [ "$(cat "$venv/agenet-horovod")" = "$key" ] \
    && "$venv/bin/python" -m pip show --quiet horovod >/dev/null 2>&1; then
    say "Horovod already installed ($key)"
    return
  fi
  dest=$cache/wheels/$key
  mkdir -p "$cache/wheels"
  exec 9>"$cache/wheels/.lock"
  flock 9  # two set-ups at once build the wheel once
  if [ -d "$dest" ]; then
    say "using the cached Horovod wheel $dest"
  else
    build_horovod_wheel "$nccl" "$cuda_home" "$dest"
  fi
  flock -u 9
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$dest"/horovod-*.whl
  echo "$key" > "$venv/agenet-horovod"
}

check_horovod() {
  local nccl=$1 report errors
  errors=$(mktemp)  # TensorFlow logs at import even when all is well: show them only on failure
  "$venv/bin/python" -c 'import horovod.tensorflow as hvd; assert hvd.gloo_built(), "Gloo not built"' 2>"$errors" \
    || { cat "$errors" >&2; die "horovod.tensorflow does not import or has no Gloo; delete $cache/wheels and run this again"; }
  report=$("$venv/bin/horovodrun" --check-build 2>"$errors") \
    || { cat "$errors" >&2; die "horovodrun --check-build failed"; }
  rm -f "$errors"
  echo "$report" | sed 's/^/[setup]   /'
  echo "$report" | grep -q '\[X\] TensorFlow' || die "horovodrun --check-build: TensorFlow is missing"
  [ "$(echo "$report" | grep -c '\[X\] Gloo')" = 2 ] || die "horovodrun --check-build: Gloo controller or operations missing"
  if [ "$nccl" = 1 ]; then
    echo "$report" | grep -q '\[X\] NCCL' || die "horovodrun --check-build: NCCL is missing"
  fi
  # What the launcher and trainer.distcheck read to know Horovod's collectives (launch/horovod_build.py).
  echo "$report" > "$venv/agenet-horovod-build"
}

# The CUDA wheels must be the release cuda_major names (a TensorFlow upgrade may move them).
check_cuda_wheels() {
  "$venv/bin/python" -m pip show --quiet "nvidia-cuda-runtime-cu$cuda_major" >/dev/null 2>&1 \
    || die "tensorflow[and-cuda] installed no nvidia-cuda-runtime-cu$cuda_major wheel: update cuda_major in launch/setup.sh"
}

flavour_reason() {
  if [ "${TF_FLAVOUR:-auto}" != auto ]; then echo "TF_FLAVOUR=$TF_FLAVOUR"
  elif [ -n "${VENV:-}" ] && [ -n "$(recorded_flavour)" ]; then echo "as VENV=$VENV was made"
  elif [ "$1" = cuda ]; then echo "an NVIDIA GPU was found"
  else echo "no NVIDIA GPU found"; fi
}

# The browser test of trainer.serve's page (tests/test_serve.py) drives Debian's Chromium with
# Debian's own driver, the same version (Selenium must never download one). Installed like the
# compiler, as root with apt-get; where that cannot be done the set-up goes on and the test is
# skipped, saying why.
ensure_browser() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Chromium and its driver with apt-get (the serving page's browser test)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      && return
  fi
  say "warning: no /usr/bin/chromium and /usr/bin/chromedriver: the browser test of the serving page will be skipped (on Debian: 'sudo apt-get install -y chromium chromium-driver')"
}

# Everything a finished set-up depends on: when it is unchanged, a rerun has nothing to do.
setup_stamp() {
  local flavour=$1 nccl=$2
  { echo "$flavour nccl$nccl $("$venv/bin/python" -V 2>&1)"
    cat "$root/requirements.txt" "$root/launch/build-requirements.txt" "$patch_file" "$root/launch/setup.sh"
  } | sha256sum | cut -c1-16
}

main() {
  local start flavour nccl stamp cuda_home="" why=""
  start=$(date +%s)
  flavour=$(pick_flavour)
  say "TensorFlow flavour: $flavour ($(flavour_reason "$flavour")) in $venv"
  if [ "$flavour" = cuda ] || [ "${HOROVOD_NCCL:-auto}" = 1 ]; then
    why=$(cuda_home_for_nccl 2>&1 >/dev/null || true)
    cuda_home=$(cuda_home_for_nccl 2>/dev/null || true)
  fi
  nccl=$(want_nccl "$flavour" "$cuda_home")
  say_collectives "$flavour" "$nccl" "$cuda_home" "$why"
  make_venv "$flavour"
  stamp=$(setup_stamp "$flavour" "$nccl")
  if [ "$(cat "$venv/agenet-ready" 2>/dev/null)" = "$stamp" ]; then
    say "already set up: $venv (delete $venv/agenet-ready to install and check again)"
    return
  fi
  rm -f "$venv/agenet-ready"
  install_requirements "$flavour"
  [ "$flavour" = cpu ] || check_cuda_wheels
  install_horovod "$flavour" "$nccl" "$cuda_home"
  check_horovod "$nccl"
  ensure_browser
  echo "$stamp" > "$venv/agenet-ready"
  say "ready in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1): $venv (activate with 'source ${venv#"$root"/}/bin/activate')"
}

# Sourcing the file (as the tests do) defines the functions without running anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
