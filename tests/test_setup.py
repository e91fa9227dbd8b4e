"""launch/setup.sh picks the TensorFlow flavour for the machine, never mixes up cached wheels,
never re-flavours an environment named by VENV=, and builds Horovod with NCCL only where a CUDA
12 nvcc is found (else Gloo, saying so, recorded for the launcher and trainer.distcheck).

The GPU path cannot run here; these tests run setup.sh's own functions with a stand-in
`nvidia-smi` (and `nvcc`) on the PATH, so the choices it makes on a GPU machine are still
checked. `VENV=.venv-cuda TF_FLAVOUR=cuda bash launch/test.sh` runs the real thing.
"""

import os
import subprocess

import pytest

from conftest import REPO
from launch import horovod_build

# What `horovodrun --check-build` prints for a build with NCCL (this machine's has none).
NCCL_BUILD = """Horovod v0.28.1:

Available Frameworks:
    [X] TensorFlow
    [X] PyTorch
    [ ] MXNet

Available Controllers:
    [ ] MPI
    [X] Gloo

Available Tensor Operations:
    [X] NCCL
    [ ] DDL
    [ ] CCL
    [ ] MPI
    [X] Gloo
"""


def _setup_shell(call, env=None, path_prefix=None):
    full_env = {key: value for key, value in os.environ.items()
                if key not in ("VENV", "CUDA_HOME", "HOROVOD_NCCL", "TF_FLAVOUR")}
    full_env.update(env or {})
    if path_prefix:
        full_env["PATH"] = f"{path_prefix}:{full_env['PATH']}"
    return subprocess.run(["bash", "-c", f'source launch/setup.sh && {call}'], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=120)


def _setup_function(call, env=None, path_prefix=None):
    result = _setup_shell(call, env, path_prefix)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _fake_nvidia_smi(directory, output, code=0):
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{output}'\nexit {code}\n")
    script.chmod(0o755)
    return directory


def _fake_nvcc(home, release):
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, "
                    f"V{release}.1'\n")
    nvcc.chmod(0o755)
    return home


def test_a_gpu_machine_gets_the_cuda_flavour(tmp_path):
    bin_dir = _fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1234)")
    assert _setup_function("pick_flavour", {"TF_FLAVOUR": "auto"}, bin_dir) == "cuda"
    assert _setup_function("want_nccl cuda /usr/local/cuda-12.4") == "1"


def test_a_driver_without_gpus_gets_the_cpu_flavour(tmp_path):
    bin_dir = _fake_nvidia_smi(tmp_path, "No devices were found", code=6)
    assert _setup_function("pick_flavour", {"TF_FLAVOUR": "auto"}, bin_dir) == "cpu"
    assert _setup_function("want_nccl cpu /usr/local/cuda-12.4") == "0"


def test_horovod_gets_nccl_only_from_a_cuda_12_nvcc(tmp_path):
    cuda12 = _fake_nvcc(tmp_path / "cuda-12.4", "12.4")
    cuda13 = _fake_nvcc(tmp_path / "cuda-13.0", "13.0")
    found = _setup_function("cuda_home_for_nccl", {"CUDA_HOME": str(cuda12)})
    assert found == str(cuda12)
    # CUDA_HOME's CUDA 13 does not stop the search: the PATH's CUDA 12 is taken.
    assert _setup_function("cuda_home_for_nccl", {"CUDA_HOME": str(cuda13)},
                           cuda12 / "bin") == str(cuda12)
    # No CUDA 12 anywhere: nothing found, and the reason names what was found instead.
    result = _setup_shell(f"default_cuda_home={tmp_path}/none; cuda_home_for_nccl",
                          {"CUDA_HOME": str(cuda13), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout == ""
    assert f"{cuda13}/bin/nvcc is CUDA 13.0" in result.stderr
    assert _setup_function("want_nccl cuda ''") == "0"
    # Gloo on a GPU machine: one line saying so and what to install.
    said = _setup_function("say_collectives cuda 0 '' 'no CUDA 12 nvcc'")
    assert len(said.splitlines()) == 1
    assert "Gloo collectives" in said and "install the CUDA 12 toolkit" in said
    # NCCL asked for without a toolkit stops before any download, saying why.
    refused = _setup_shell("say_collectives cuda 1 '' 'no CUDA 12 nvcc'",
                           {"HOROVOD_NCCL": "1"})
    assert refused.returncode == 1
    assert "HOROVOD_NCCL=1 needs a CUDA 12 toolkit: no CUDA 12 nvcc" in refused.stderr


def test_an_environment_named_by_venv_keeps_its_flavour(tmp_path):
    venv = tmp_path / "venv-cpu"
    venv.mkdir()
    (venv / "agenet-flavour").write_text("cpu\n")
    gpu = _fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1234)")
    assert _setup_function("pick_flavour", {"VENV": str(venv)}, gpu) == "cpu"
    refused = _setup_shell("make_venv cuda", {"VENV": str(venv)})
    assert refused.returncode == 1
    assert f"{venv} is a cpu environment and TF_FLAVOUR=cuda asks for cuda" in refused.stderr
    assert "VENV=" in refused.stderr and "nothing was changed" in refused.stderr
    assert (venv / "agenet-flavour").read_text() == "cpu\n"
    # A relative VENV= is the repository's folder of that name.
    assert _setup_function("echo $venv", {"VENV": ".venv-cuda"}) == str(REPO / ".venv-cuda")
    assert _setup_function("echo $venv") == str(REPO / ".venv")


def test_the_recorded_build_tells_the_collectives(tmp_path):
    assert horovod_build.built(str(tmp_path)) is None
    assert horovod_build.collectives(str(tmp_path)).startswith("unknown")
    assert not horovod_build.has_nccl(str(tmp_path))
    (tmp_path / horovod_build.RECORD).write_text(NCCL_BUILD)
    assert horovod_build.has_nccl(str(tmp_path)) and not horovod_build.has_mpi(str(tmp_path))
    assert horovod_build.collectives(str(tmp_path)) == "NCCL"
    gloo = NCCL_BUILD.replace("[X] NCCL", "[ ] NCCL")
    (tmp_path / horovod_build.RECORD).write_text(gloo)
    assert horovod_build.collectives(str(tmp_path)) == "Gloo through host memory"
    assert horovod_build.built(str(tmp_path)) == {"controllers": {"Gloo"},
                                                  "operations": {"Gloo"}}


def test_both_flavours_pin_the_same_tensorflow(tmp_path):
    _setup_function(f"requirements_for cpu {tmp_path}/cpu.txt && "
                    f"requirements_for cuda {tmp_path}/cuda.txt")
    cpu = (tmp_path / "cpu.txt").read_text().splitlines()
    cuda = (tmp_path / "cuda.txt").read_text().splitlines()
    cpu_tf = [line for line in cpu if line.startswith("tensorflow-cpu==")]
    cuda_tf = [line for line in cuda if line.startswith("tensorflow[and-cuda]==")]
    assert len(cpu_tf) == len(cuda_tf) == 1
    assert cpu_tf[0].split("==")[1] == cuda_tf[0].split("==")[1]
    assert set(cpu) - set(cpu_tf) == set(cuda) - set(cuda_tf)


@pytest.mark.parametrize("other", ["cuda 1", "cuda 0", "cpu 1"])
def test_cached_wheels_are_keyed_by_flavour_and_nccl(other, tmp_path):
    cuda = _fake_nvcc(tmp_path / "cuda", "12.4")
    cpu_key = _setup_function("wheel_key cpu 0")
    assert "tf2.21.0-cpu-nccl0-py311" in cpu_key
    assert _setup_function(f"wheel_key {other} {cuda}") != cpu_key
    if other == "cuda 1":  # the toolkit that compiled the kernels too
        assert "-cuda-nccl1-cuda12.4-" in _setup_function(f"wheel_key {other} {cuda}")



def test_a_finished_set_up_is_skipped_only_while_its_inputs_are_unchanged(tmp_path):
    for name in ("requirements.txt", "launch/build-requirements.txt", "launch/setup.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((REPO / name).read_text())
    stamp = _setup_function("setup_stamp cpu 0")
    assert _setup_function(f"root={tmp_path}; setup_stamp cpu 0") == stamp
    assert _setup_function("setup_stamp cuda 1") != stamp
    with open(tmp_path / "requirements.txt", "a") as requirements:
        requirements.write("six==1.17.0\n")  # a new pin: the set-up must run again
    assert _setup_function(f"root={tmp_path}; setup_stamp cpu 0") != stamp
