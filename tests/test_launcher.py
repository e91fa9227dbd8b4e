"""launch/single_node.sh and launch/multi_node.sh: the commands they generate for remote hosts,
real jobs on this machine (Horovod over Gloo; 2 multi_worker "hosts" on 127.0.0.1), and one
error line with exit code 2 for every mistake in their own flags."""

import json
import os
import shutil
import signal
import time

import pytest

from conftest import REPO, TINY_CROP_SIZE, Watched, json_lines, run
from launch import entry
from launch import launcher

TINY_JOB = ["--data=synthetic", "--model=tiny", f"--crop_size={TINY_CROP_SIZE}",
            "--batch_size=16", "--steps=4", "--log_every=2"]


def test_hosts_from_a_list_or_a_hostfile(tmp_path):
    assert launcher.parse_hosts("node1:4,node2:4") == [("node1", 4), ("node2", 4)]
    assert launcher.parse_hosts("node1,10.0.0.2:2") == [("node1", 1), ("10.0.0.2", 2)]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1 slots=4\nnode2:2\nnode3  # one slot\n\n")
    assert launcher.parse_hosts(hostfile=str(hostfile)) == [("node1", 4), ("node2", 2),
                                                             ("node3", 1)]
    hostfile.write_text("node1 slots=4\nnode2 slots=four\n")
    with pytest.raises(entry.UserError, match=f"{hostfile}:2: 'node2 slots=four' is not"):
        launcher.parse_hosts(hostfile=str(hostfile))


def assert_one_error(result, *named):
    """A launcher mistake: exit code 2, exactly one `error:` line on stderr naming each of
    `named`, no traceback, no usage text, and nothing started or printed as started."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == entry.USAGE_EXIT_CODE, result.stderr[-3000:]
    assert len(errors) == 1 and len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    assert result.stdout == ""
    for text in named:
        assert text in errors[0], errors[0]


def multi_node(*flags):
    return run(["bash", "launch/multi_node.sh", *flags, "--dry_run", "--records=r",
                "--model_dir=m"])


@pytest.mark.parametrize("flags, named", [
    (["--hosts=host1:4,host2;4"], ["--hosts=host1:4,host2;4", "'host2;4' is not host[:slots]"]),
    (["--hosts=host1 :4, host2:4"], ["'host1 :4' is not host[:slots]"]),
    (["--hosts=host1", ":4,", "host2:4"], ["unexpected argument(s): :4, host2:4"]),  # unquoted
    (["--hosts=host1:0"], ["--hosts=host1:0", "host1 needs at least one slot"]),
    (["--hosts=host1:-2"], ["'host1:-2' is not host[:slots]"]),
    (["--hosts=host1:4,"], ["--hosts=host1:4,", "an empty item"]),
    ([], ["no hosts"]),
    (["--hosts=host1:4", "--hostfile=hosts.txt"], ["--hosts or --hostfile"]),
    (["--hosts=host1:4", "--base_port=80"], ["--base_port=80", "1024-65535"]),
    (["--hosts=host1:4", "--base_port=70000"], ["--base_port=70000", "1024-65535"]),
    (["--hosts=host1:4,host2:4", "--backend=tf", "--base_port=65535"],
     ["--base_port=65535", "2 hosts need ports 65535-65536"]),
    (["--hosts=host1:4", "--base_port=high"], ["--base_port", "'high'"]),
    (["--hosts=host1:4", "--backend=mpi"], ["--backend", "'mpi'"]),
    (["--hosts=host1:4", "--controller=mpi"], ["--controller=mpi", "built without MPI",
                                               "leave the flag out"]),
])
def test_multi_node_refuses_a_mistake_with_one_line(flags, named):
    assert_one_error(multi_node(*flags), *named)


def test_multi_node_names_the_hostfile_line_that_is_not_a_host(tmp_path):
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("# the cluster\nnode1 slots=4\nnode2;4\n")
    assert_one_error(multi_node(f"--hostfile={hostfile}"), f"{hostfile}:3", "'node2;4'")
    hostfile.write_text("node1 slots=0\n")
    assert_one_error(multi_node(f"--hostfile={hostfile}"), f"{hostfile}:1",
                     "node1 needs at least one slot")
    assert_one_error(multi_node(f"--hostfile={tmp_path / 'missing'}"),
                     f"--hostfile {tmp_path / 'missing'}", "no such file")


def test_multi_node_passes_good_hosts_and_trainer_flags_on():
    result = multi_node("--hosts=host1:4,host2:4", "--model", "resnet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert " -np 8 -H host1:4,host2:4 --gloo " in result.stdout
    assert result.stdout.rstrip().endswith("-m trainer.main --model resnet --records=r "
                                           "--model_dir=m")


@pytest.mark.parametrize("flags, named", [
    (["--np", "0"], ["--np=0", "at least 1"]),
    (["--np", "two"], ["--np", "'two'"]),
    (["records_dir"], ["unexpected argument(s): records_dir"]),
    (["--mode=horovod:2"], ["--mode", "'horovod:2'"]),
])
def test_single_node_refuses_a_mistake_with_one_line(flags, named):
    assert_one_error(run(["bash", "launch/single_node.sh", *flags, "--dry_run"]), *named)


@pytest.mark.parametrize("script", ["single_node.sh", "multi_node.sh"])
@pytest.mark.parametrize("venv", ["", ".venv-cuda"])
def test_a_checkout_without_its_environment_says_how_to_make_it(tmp_path, script, venv):
    (tmp_path / "launch").mkdir()
    for name in (script, "venv.sh"):  # a checkout of launch/ without .venv
        shutil.copy(REPO / "launch" / name, tmp_path / "launch" / name)
    result = run(["bash", tmp_path / "launch" / script, "--hosts=host1:4", "--dry_run"],
                 env={"VENV": venv})  # VENV= names the environment, in the checkout
    assert_one_error(result, f"{tmp_path}/{venv or '.venv'}/bin/python not found",
                     "launch/setup.sh")


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


@pytest.mark.parametrize("gpus, processes, mode, nccl, expected", [
    (0, None, None, False, ["python", "-m", "trainer.main"]),
    (0, 2, None, False, ["--gloo", "-np", "2", "-H", "localhost:2"]),
    # GPUs: MirroredStrategy (NCCL inside TensorFlow) unless Horovod has NCCL itself.
    (4, None, None, False, ["python", "-m", "trainer.main", "--strategy=mirrored"]),
    (4, None, None, True, ["--gloo", "-np", "4", "-H", "localhost:4"]),
    (1, None, None, False, ["python", "-m", "trainer.main"]),
    (4, None, "horovod", False, ["--gloo", "-np", "4", "-H", "localhost:4"]),
    (4, 2, None, False, ["--gloo", "-np", "2", "-H", "localhost:2"]),
    (4, None, "mirrored", True, ["python", "-m", "trainer.main", "--strategy=mirrored"]),
])
def test_single_node_picks_the_job_for_the_devices(gpus, processes, mode, nccl, expected):
    command, _ = launcher.single_node_command("python", [], gpus, processes, mode,
                                              horovod_nccl=nccl)
    if expected[0] == "--gloo":
        assert command[0].endswith("horovodrun") and command[1:1 + len(expected)] == expected
    else:
        assert command == expected


@pytest.mark.parametrize("gpus, nccl, backend", [(8, False, "tf"), (8, True, "horovod"),
                                                 (0, False, "horovod")])
def test_multi_node_picks_tf_distribute_on_gpus_unless_horovod_has_nccl(monkeypatch, gpus,
                                                                         nccl, backend):
    monkeypatch.setattr(launcher, "gpu_count", lambda: gpus)
    monkeypatch.setattr(launcher.horovod_build, "has_nccl", lambda: nccl)
    args, trainer_flags = launcher._parser().parse_known_args(
        ["multi_node", "--hosts=node1:8,node2:8", "--steps=9"])
    commands = launcher.commands_of(args, trainer_flags, python="python")
    if backend == "tf":
        assert [command[:2] for _, command, _ in commands] == [["ssh", "node1"],
                                                               ["ssh", "node2"]]
        assert "--strategy=multi_worker --steps=9" in commands[0][1][2]
    else:
        [(_, command, _)] = commands
        assert command[1:6] == ["-np", "16", "-H", "node1:8,node2:8", "--gloo"]


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
    assert_one_error(refused, "--module is for single_node")


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
