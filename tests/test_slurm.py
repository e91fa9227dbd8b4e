"""SLURM: an srun step is a MultiWorkerMirroredStrategy cluster (launch/slurm.py,
launch/slurm_multi_worker.sbatch), and the Horovod example stops its ranks, never horovodrun.

No SLURM here: a stand-in `srun` starts the tasks on this machine with the variables the real
one sets (node list localhost, the task counts, each task's ids, the job's id)."""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_CROP_SIZE, Watched
from launch import entry
from launch import slurm
from trainer import strategy

STOPPABLE = ["--data=synthetic", "--model=tiny", f"--crop_size={TINY_CROP_SIZE}",
             "--batch_size=16", "--learning_rate=0.05", "--dropout=0", "--steps=100000",
             "--log_every=5", "--checkpoint_every=0"]

# srun on one machine: SLURM_NTASKS copies of the command (after srun's own options), each with
# the variables srun gives a task of a one-node step.
FAKE_SRUN = """#!{python}
import os, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
tasks = int(os.environ["SLURM_NTASKS"])
step = {{"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_NODEID": "0",
        "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": str(tasks),
        "SLURMD_NODENAME": "localhost"}}
with open(os.environ.get("FAKE_SRUN_LOG", os.devnull), "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
tasks = [subprocess.Popen(args, env={{**os.environ, **step, "SLURM_PROCID": str(i),
                                     "SLURM_LOCALID": str(i)}}) for i in range(tasks)]
sys.exit(max(task.wait() for task in tasks))
"""


def step_environment(procid, localid, node="n2"):
    """What srun sets in task `procid` of a step of 2 nodes with 2 tasks each."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
            "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), "SLURMD_NODENAME": node}


@pytest.fixture
def fake_srun(tmp_path):
    """A folder to put first on PATH, holding the stand-in srun."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (folder / "srun").chmod(0o755)
    return folder


def test_slurm_node_lists_and_task_counts_expand_in_order():
    assert slurm.expand_nodelist("gpu[01-03,10],login2,r[1-2]-n[8-9]") == [
        "gpu01", "gpu02", "gpu03", "gpu10", "login2", "r1-n8", "r1-n9", "r2-n8", "r2-n9"]
    assert slurm.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    for nodelist in ("n[1-", "a,,b", ""):
        with pytest.raises(ValueError):
            slurm.expand_nodelist(nodelist)


def test_each_task_of_a_step_is_a_worker_with_its_own_address():
    config = slurm.tf_config(step_environment(procid=3, localid=1))
    port = slurm.worker_port(4242, 0)
    assert config == {"cluster": {"worker": ["n1:%d" % port, "n1:%d" % (port + 1),
                                             "n2:%d" % port, "n2:%d" % (port + 1)]},
                      "task": {"type": "worker", "index": 3}}
    # Another job sharing the nodes listens elsewhere.
    assert slurm.worker_port(4243, 0) not in (port, port + 1)
    assert 1024 < port and slurm.worker_port(10**9, slurm.MAX_TASKS_PER_NODE - 1) < 32768


def test_tasks_not_placed_node_by_node_are_refused():
    # --distribution=cyclic puts task 1 on the second node: no task can compute the others'.
    with pytest.raises(entry.UserError, match="srun --distribution=block"):
        slurm.tf_config(step_environment(procid=1, localid=0, node="n2"))
    missing = step_environment(0, 0, "n1")
    del missing["SLURM_STEP_NODELIST"]
    with pytest.raises(entry.UserError, match="without SLURM_STEP_NODELIST"):
        slurm.tf_config(missing)


def test_auto_is_multi_worker_in_an_srun_step_only():
    in_step = step_environment(procid=0, localid=0, node="n1")
    assert strategy.pick_strategy(in_step) == "multi_worker"
    # horovodrun's ranks inherit the allocation's variables: Horovod first.
    assert strategy.pick_strategy({**in_step, "HOROVOD_RANK": "0"}) == "horovod"
    # A batch script, a process inside salloc, or a one-task step stays one device.
    batch = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert strategy.pick_strategy(batch) == "one_device"
    assert strategy.pick_strategy({**in_step, "SLURM_STEP_NUM_TASKS": "1"}) == "one_device"
    assert slurm.export_tf_config(dict(batch)) is None


def free_job_id(tasks):
    """A job id whose worker ports on this machine are free."""
    for job_id in random.Random().sample(range(1, 10**6), 100):
        try:
            for local in range(tasks):
                with socket.socket() as probe:
                    probe.bind(("", slurm.worker_port(job_id, local)))
            return job_id
        except OSError:
            continue
    raise AssertionError("no job id with free ports")


def events(records, name):
    return [r for r in records if r.get("event") == name]


def test_an_srun_step_trains_as_one_job_and_sigterm_to_one_task_stops_both(fake_srun, tmp_path):
    srun_log = tmp_path / "srun.log"
    env = {"PATH": f"{fake_srun}:{os.environ['PATH']}", "SLURM_JOB_ID": str(free_job_id(2)),
           "SLURM_JOB_NAME": "test", "SLURM_NTASKS": "2", "SLURM_SUBMIT_DIR": str(REPO),
           "MODEL_DIR": str(tmp_path / "model"), "FAKE_SRUN_LOG": str(srun_log)}
    job = Watched(["bash", "launch/slurm_multi_worker.sbatch", *STOPPABLE], env=env)
    job.wait_for(lambda j: len(events(j.records(), "start")) == 2 and
                 any("train/loss" in r for r in j.records()))
    starts = sorted(events(job.records(), "start"), key=lambda r: r["process"])
    assert [(r["strategy"], r["replicas"]) for r in starts] == [("multi_worker", 2)] * 2
    if len(os.sched_getaffinity(0)) >= 2:  # launch/host.py gave each task its own cores
        assert not set(starts[0]["cpus"]) & set(starts[1]["cpus"])
    os.kill(starts[1]["pid"], signal.SIGTERM)
    assert job.finish() == 0, "".join(job.stdout + job.stderr)[-3000:]
    stopped = events(job.records(), "stopped")
    assert sorted(r["process"] for r in stopped) == [0, 1]
    assert len({r["step"] for r in stopped}) == 1 and stopped[0]["step"] > 0
    checkpoint = tf_checkpoint_step(tmp_path / "model")
    assert checkpoint == stopped[0]["step"]
    assert srun_log.read_text().split()[:2] == ["--kill-on-bad-exit=1", "--cpu-bind=none"]


def tf_checkpoint_step(model_dir):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{model_dir}/checkpoints"))
    return int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_the_multi_worker_script_asks_for_sigterm_before_the_time_limit():
    text = (REPO / "launch" / "slurm_multi_worker.sbatch").read_text()
    assert "#SBATCH --signal=TERM@300\n" in text  # no "B:": srun's tasks get it


HOROVOD_EXAMPLE = REPO / "launch" / "slurm_example.sbatch"


def trainer_pattern():
    return re.search(r"^trainer_processes='(.*)'$", HOROVOD_EXAMPLE.read_text(), re.M).group(1)


def test_the_horovod_example_stops_the_ranks_and_waits_for_the_launcher(tmp_path):
    # A copy of the repository whose multi_node.sh is a stand-in launcher, beside a stand-in
    # srun and scontrol that record their arguments.
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "multi_node.sh").write_text(
        "trap 'echo TERM >> \"$LOG\"' TERM\necho \"launcher $*\" >> \"$LOG\"\n"
        "sleep 3\nexit 7\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", 'echo "srun $*" >> "$LOG"'),
                       ("scontrol", "printf 'node1\\nnode2\\n'")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    script = subprocess.Popen(
        ["bash", str(HOROVOD_EXAMPLE), "--steps=9"],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
             "AGENET_DIR": str(tmp_path), "SLURM_JOB_NODELIST": "node[1-2]",
             "SLURM_GPUS_PER_NODE": "a100:4", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NAME": "test"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (log.exists() and "launcher" in log.read_text()):
        assert time.monotonic() < deadline and script.poll() is None
        time.sleep(0.05)
    script.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends
    assert script.wait(timeout=30) == 7  # the launcher's own exit code, after it ended
    lines = log.read_text().splitlines()
    assert lines[0].startswith("launcher --hosts=node1:4,node2:4 ")
    assert lines[0].endswith("--epochs=30 --steps=9")
    assert lines[1:] == [f"srun --overlap --nodes=2 --ntasks-per-node=1 pkill -TERM -f "
                         f"{trainer_pattern()}"]  # and no TERM to the launcher itself


def test_the_horovod_examples_stop_reaches_ranks_not_horovodrun(tmp_path):
    # Read-only: pgrep with the script's pattern (pkill would also stop other users' trainers).
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "main.py").write_text("import time\ntime.sleep(60)\n")
    (tmp_path / "horovodrun").write_text("import time\ntime.sleep(60)\n")
    python = sys.executable
    rank = [python, "-m", "trainer.main", "--model_dir=m"]
    others = [[python, str(tmp_path / "horovodrun"), "-np", "2", "--gloo", *rank],
              ["bash", "-c", f"sleep 60 && cd / && {' '.join(rank)}"]]
    processes = [subprocess.Popen(command, cwd=tmp_path, env={**os.environ,
                                                             "PYTHONPATH": str(tmp_path)})
                 for command in [rank, *others]]
    try:
        time.sleep(1)
        found = subprocess.run(["pgrep", "-f", trainer_pattern()], capture_output=True,
                               text=True).stdout.split()
        assert str(processes[0].pid) in found
        assert not {str(p.pid) for p in processes[1:]} & set(found)
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_the_horovod_example_never_execs_its_launcher():
    text = HOROVOD_EXAMPLE.read_text()
    assert "#SBATCH --signal=B:USR1@300\n" in text
    assert not re.search(r"^\s*exec\b", text, re.M)
