"""Processes sharing a host split its cores between TensorFlow's thread pools."""

import json

import pytest

from conftest import run
from launch import host


def test_alone_by_default():
    assert host.processes_on_this_host({}) == 1


@pytest.mark.parametrize("variable", ["HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"])
def test_launcher_says_how_many_processes_share_the_host(variable):
    assert host.processes_on_this_host({variable: "4"}) == 4


def test_tf_config_counts_the_tasks_on_this_tasks_host():
    tf_config = {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.1:2223", "10.0.0.2:2222"]},
                 "task": {"type": "worker", "index": 2}}
    assert host.processes_on_this_host({"TF_CONFIG": json.dumps(tf_config)}) == 1
    tf_config["task"]["index"] = 0
    assert host.processes_on_this_host({"TF_CONFIG": json.dumps(tf_config)}) == 2


def test_launcher_says_which_process_this_is():
    assert host.local_rank({}) is None
    assert host.local_rank({"HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2"}) == 1
    assert host.local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}) == 3


def test_tf_config_local_rank_is_the_place_among_this_hosts_tasks():
    tf_config = {"cluster": {"chief": ["10.0.0.1:2222"],
                             "worker": ["10.0.0.2:2222", "10.0.0.1:2223"]},
                 "task": {"type": "worker", "index": 1}}
    assert host.local_rank({"TF_CONFIG": json.dumps(tf_config)}) == 1
    tf_config["task"] = {"type": "worker", "index": 0}
    assert host.local_rank({"TF_CONFIG": json.dumps(tf_config)}) == 0


def test_an_srun_task_knows_its_place_on_its_node():
    # A step of 2 nodes, 3 tasks on the first (whose third task this is) and 1 on the second.
    task = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_STEP_TASKS_PER_NODE": "3,1",
            "SLURM_PROCID": "2", "SLURM_LOCALID": "2", "SLURMD_NODENAME": "node1"}
    assert host.processes_on_this_host(task) == 3 and host.local_rank(task) == 2
    last = dict(task, SLURM_PROCID="3", SLURM_LOCALID="0", SLURMD_NODENAME="node2")
    assert host.processes_on_this_host(last) == 1 and host.local_rank(last) == 0
    # The batch script itself (and a process inside salloc) is alone, with no rank.
    batch = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert host.processes_on_this_host(batch) == 1 and host.local_rank(batch) is None


@pytest.mark.parametrize("cores, processes, rank, own", [
    ([0, 1], 2, 0, [0]), ([0, 1], 2, 1, [1]), (list(range(8)), 2, 1, [4, 5, 6, 7]),
    ([0, 1], 3, 2, [0]), ([2, 3, 6, 7], 2, 1, [6, 7]), ([5], 2, 1, [5])])
def test_each_rank_gets_its_own_slice_of_the_cores(cores, processes, rank, own):
    assert host.own_cores(cores, processes, rank) == own


@pytest.mark.parametrize("processes, cores, intra", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4)])
def test_cores_are_split_between_processes(processes, cores, intra):
    assert host.thread_counts(processes, cores) == (intra, host.INTER_OP_THREADS)


def test_configure_threads_sets_tensorflow_pools(python):
    code = ("from launch import host; import tensorflow as tf; t = host.configure_threads(); "
            "tf.constant(1.0) + 1.0; "
            "print(t['intra_op'], tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads(), host.available_cores())")
    result = run([python, "-c", code], env={"HOROVOD_LOCAL_SIZE": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    planned, intra, inter, cores = map(int, result.stdout.split())
    assert intra == planned == max(1, cores // 2)
    assert inter == host.INTER_OP_THREADS


def test_a_rank_sharing_the_cpu_is_bound_to_its_own_cores(python):
    # Every thread, TensorFlow's pools included (started by the first op), runs on the rank's
    # cores only, with one inter-op thread.
    code = ("import os; from launch import host; import tensorflow as tf; "
            "cores = sorted(os.sched_getaffinity(0)); t = host.configure_threads(); "
            "tf.constant(1.0) + 1.0; "
            "threads = [sorted(os.sched_getaffinity(int(tid))) "
            "           for tid in os.listdir('/proc/self/task')]; "
            "print(t['bound_to'] == host.own_cores(cores, 2, 1), "
            "all(cpus == t['bound_to'] for cpus in threads), len(threads) > 2, "
            "t['intra_op'] == len(t['bound_to']), "
            "tf.config.threading.get_inter_op_parallelism_threads())")
    result = run([python, "-c", code], env={"HOROVOD_LOCAL_SIZE": "2", "HOROVOD_LOCAL_RANK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True", "True", "True",
                                     str(host.BOUND_INTER_OP_THREADS)]


def test_a_process_without_a_rank_is_not_bound(python):
    code = ("import os; from launch import host; before = os.sched_getaffinity(0); "
            "t = host.configure_threads(processes=2); "
            "print(t['bound_to'], os.sched_getaffinity(0) == before)")
    result = run([python, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["None", "True"]


def test_configure_threads_too_late_is_a_clear_error(python):
    code = ("import tensorflow as tf; tf.constant(1.0) + 1.0\n"
            "from launch import host\n"
            "try:\n    host.configure_threads()\n"
            "except RuntimeError as e:\n    print(e)")
    result = run([python, "-c", code])
    assert "must run before TensorFlow runs its first op" in result.stdout
