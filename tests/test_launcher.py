"""launch/single_node.sh and launch/multi_node.sh: the commands they generate for remote hosts,
and real jobs on this machine (Horovod over Gloo; 2 multi_worker "hosts" on 127.0.0.1)."""

import json
import os
import signal
import time

import pytest

from conftest import TINY_CROP_SIZE, Watched, json_lines, run
from launch import launcher

TINY_JOB = ["--data=synthetic", "--model=tiny", f"--crop_size={TINY_CROP_SIZE}",
            "--batch_size=16", "--steps=4", "--log_every=2"]


def test_hosts_from_a_list_or_a_hostfile(tmp_path):
    assert launcher.parse_hosts("node1:4,node2:4") == [("node1", 4), ("node2", 4)]
    assert launcher.parse_hosts("node1") == [("node1", 1)]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1 slots=4\nnode2:2\n\n")
    assert launcher.parse_hosts(hostfile=str(hostfile)) == [("node1", 4), ("node2", 2)]
    hostfile.write_text("node1 slots=4\nnode2 slots=four\n")
    with pytest.raises(ValueError, match=f"{hostfile}:2: slots of 'node2' must be a number"):
        launcher.parse_hosts(hostfile=str(hostfile))


def test_horovod_command_for_remote_hosts():
    command = launcher.horovod_command("python", ["--model=resnet"], [("node1", 4), ("node2", 4)],
                                       network_interface="eth0", controller="mpi")
    assert command[1:] == ["-np", "8", "-H", "node1:4,node2:4", "--mpi", "--network-interface",
                           "eth0", "python", "-m", "trainer.main", "--model=resnet"]


def test_tf_backend_runs_one_worker_per_host_over_ssh():
    commands = launcher.tf_commands("python", ["--steps=9"], [("node1", 4), ("node2", 4)],
                                    base_port=3000, repo="/srv/agenet")
    assert [(host, command[:2]) for host, command, _ in commands] == [
        ("node1", ["ssh", "node1"]), ("node2", ["ssh", "node2"])]
    remote = commands[1][1][2]
    assert remote.startswith("cd /srv/agenet && TF_CONFIG=")
    config = json.loads(remote.split("TF_CONFIG='")[1].split("'")[0])
    assert config == {"cluster": {"worker": ["node1:3000", "node2:3001"]},
                      "task": {"type": "worker", "index": 1}}
    assert remote.endswith("python -m trainer.main --strategy=multi_worker --steps=9")


@pytest.mark.parametrize("gpus, processes, mode, expected", [
    (0, None, "horovod", ["python", "-m", "trainer.main"]),
    (0, 2, "horovod", ["--gloo", "-np", "2", "-H", "localhost:2"]),
    (4, None, "horovod", ["-np", "4", "-H", "localhost:4"]),
    (4, None, "mirrored", ["python", "-m", "trainer.main", "--strategy=mirrored"]),
])
def test_single_node_picks_the_job_for_the_devices(gpus, processes, mode, expected):
    command, _ = launcher.single_node_command("python", [], gpus, processes, mode)
    found = command[1:1 + len(expected)] if command[0].endswith("horovodrun") else command
    assert found[:len(expected)] == expected


def test_single_node_runs_cross_validate_the_same_way():
    flags = ["--dry_run", "--records=r", "--model_dir=m"]
    result = run(["bash", "launch/single_node.sh", "--np", "2",
                  "--module=trainer.cross_validate", *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "horovodrun --gloo -np 2 -H localhost:2 " in result.stdout
    assert result.stdout.rstrip().endswith(
        "-m trainer.cross_validate --records=r --model_dir=m")
    default = run(["bash", "launch/single_node.sh", *flags])
    assert default.stdout.rstrip().endswith("-m trainer.main --records=r --model_dir=m")
    refused = run(["bash", "launch/multi_node.sh", "--hosts=node1:1,node2:1",
                   "--module=trainer.cross_validate", *flags])
    assert refused.returncode == 2 and "--module is for single_node" in refused.stderr


def test_single_node_two_gloo_processes_train(tmp_path):
    result = run(["bash", "launch/single_node.sh", "--np", "2", *TINY_JOB,
                  f"--model_dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "+ " in result.stdout and "horovodrun --gloo -np 2" in result.stdout
    starts = [r for r in json_lines(result.stdout) if r.get("event") == "start"]
    assert sorted(r["process"] for r in starts) == [0, 1]
    assert {r["strategy"] for r in starts} == {"horovod"}
    assert all(r["host"] and r["devices"] for r in starts)
    if len(os.sched_getaffinity(0)) >= 2:  # each rank computes on its own cores
        assert not set(starts[0]["cpus"]) & set(starts[1]["cpus"])


def test_multi_node_tf_backend_with_two_hosts_on_this_machine(tmp_path):
    port = launcher.BASE_PORT + 100
    result = run(["bash", "launch/multi_node.sh", "--hosts=127.0.0.1:1,localhost:1",
                  "--backend=tf", f"--base_port={port}", *TINY_JOB, f"--model_dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("TF_CONFIG=") == 2
    finished = [r for r in json_lines(result.stdout) if r.get("event") == "finished"]
    assert sorted(r["process"] for r in finished) == [0, 1]
    assert {r["step"] for r in finished} == {4}


def test_a_worker_that_dies_ends_the_job_naming_it(tmp_path):
    port = launcher.BASE_PORT + 200
    job = Watched(["bash", "launch/multi_node.sh", "--hosts=127.0.0.1:1,localhost:1",
                   "--backend=tf", f"--base_port={port}", "--grace_seconds=5",
                   *TINY_JOB[:-2], "--steps=1000000", "--log_every=5",
                   f"--model_dir={tmp_path}"])
    job.wait_for(lambda j: any("train/loss" in r for r in j.records()))
    worker1 = next(r["pid"] for r in job.records()
                   if r.get("event") == "start" and r["process"] == 1)
    started = time.monotonic()
    os.kill(worker1, signal.SIGKILL)
    assert job.finish(timeout=120) != 0
    assert time.monotonic() - started < 60
    assert "error: worker 1 (localhost) exited with code -9" in "".join(job.stderr)
