"""launch/setup.sh picks the TensorFlow flavour for the machine and never mixes up cached wheels.

The GPU path cannot run here; these tests run setup.sh's own functions with a stand-in
`nvidia-smi` on the PATH, so the choice it makes on a GPU machine is still checked.
"""

import os
import subprocess

import pytest

from conftest import REPO


def _setup_function(call, env=None, path_prefix=None):
    full_env = dict(os.environ, **(env or {}))
    if path_prefix:
        full_env["PATH"] = f"{path_prefix}:{full_env['PATH']}"
    result = subprocess.run(["bash", "-c", f'source launch/setup.sh && {call}'], cwd=REPO,
                            env=full_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _fake_nvidia_smi(directory, output, code=0):
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{output}'\nexit {code}\n")
    script.chmod(0o755)
    return directory


def test_a_gpu_machine_gets_the_cuda_flavour(tmp_path):
    bin_dir = _fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1234)")
    assert _setup_function("pick_flavour", {"TF_FLAVOUR": "auto"}, bin_dir) == "cuda"
    assert _setup_function("want_nccl cuda", {"HOROVOD_NCCL": "auto"}) == "1"


def test_a_driver_without_gpus_gets_the_cpu_flavour(tmp_path):
    bin_dir = _fake_nvidia_smi(tmp_path, "No devices were found", code=6)
    assert _setup_function("pick_flavour", {"TF_FLAVOUR": "auto"}, bin_dir) == "cpu"
    assert _setup_function("want_nccl cpu", {"HOROVOD_NCCL": "auto"}) == "0"


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
def test_cached_wheels_are_keyed_by_flavour_and_nccl(other):
    cpu_key = _setup_function("wheel_key cpu 0")
    assert "tf2.21.0-cpu-nccl0-py311" in cpu_key
    assert _setup_function(f"wheel_key {other}") != cpu_key



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
