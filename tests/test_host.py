"""Processes sharing a host split its cores between TensorFlow's thread pools; with GPUs, a
rank is bound to its GPU's NUMA node (on a fake topology: a folder laid out like /sys)."""

import json
import os

import pytest

from conftest import run
from launch import gpu_topology
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
    # Also: TensorFlow's own TF_NUM_INTEROP_THREADS wins; CUDA's order is set, the GPU thread
    # mode only where there are GPUs.
    code = ("import os; from launch import host; before = os.sched_getaffinity(0); "
            "t = host.configure_threads(processes=2); import tensorflow as tf; "
            "print(t['bound_to'], os.sched_getaffinity(0) == before, "
            "tf.config.threading.get_inter_op_parallelism_threads(), "
            "os.environ['CUDA_DEVICE_ORDER'], 'TF_GPU_THREAD_MODE' in os.environ)")
    result = run([python, "-c", code], env={"TF_NUM_INTEROP_THREADS": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["None", "True", "3", "PCI_BUS_ID", "False"]


def test_configure_threads_too_late_is_a_clear_error(python):
    code = ("import tensorflow as tf; tf.constant(1.0) + 1.0\n"
            "from launch import host\n"
            "try:\n    host.configure_threads()\n"
            "except RuntimeError as e:\n    print(e)")
    result = run([python, "-c", code])
    assert "must run before TensorFlow runs its first op" in result.stdout


# A host of two NUMA nodes, each with 4 physical cores of 2 hyperthreads (the second threads
# numbered after every first one, as Linux does: CPU 8 is CPU 0's sibling) and 2 of its 4 GPUs,
# as nvidia-smi prints them; and a node of GPU memory without cores.
NODE_CORES = {0: "0-3,8-11", 1: "4-7,12-15", 2: ""}
GPU_NODES = {"0000:1a:00.0": "0", "0000:3b:00.0": "0", "0000:86:00.0": "1", "0000:af:00.0": "1"}
NVIDIA_SMI = """0, GPU-aaaa0000-1111, 00000000:1A:00.0
1, GPU-bbbb0000-2222, 00000000:3B:00.0
2, GPU-cccc0000-3333, 00000000:86:00.0
3, GPU-dddd0000-4444, 00000000:AF:00.0
"""
ALL_CORES = list(range(16))
NODE_CORES_0 = [0, 1, 2, 3, 8, 9, 10, 11]


def fake_sys(root, node_cores=NODE_CORES, gpu_nodes=GPU_NODES, siblings=True):
    for cpu in range(8) if siblings else ():
        for thread in (cpu, cpu + 8):
            os.makedirs(root / "devices" / "system" / "cpu" / f"cpu{thread}" / "topology")
            (root / "devices" / "system" / "cpu" / f"cpu{thread}" / "topology" /
             "thread_siblings_list").write_text(f"{cpu},{cpu + 8}\n")
    for node, cpulist in node_cores.items():
        os.makedirs(root / "devices" / "system" / "node" / f"node{node}")
        (root / "devices" / "system" / "node" / f"node{node}" / "cpulist").write_text(
            cpulist + "\n")
    for address, node in gpu_nodes.items():
        os.makedirs(root / "bus" / "pci" / "devices" / address)
        (root / "bus" / "pci" / "devices" / address / "numa_node").write_text(node + "\n")
    return str(root)


@pytest.fixture
def two_nodes(tmp_path):
    return gpu_topology.read(fake_sys(tmp_path), NVIDIA_SMI)


def horovod_rank(rank, size=4, **more):
    return {"HOROVOD_LOCAL_SIZE": str(size), "HOROVOD_LOCAL_RANK": str(rank), **more}


@pytest.mark.parametrize("bus_id, address", [
    ("00000000:3B:00.0", "0000:3b:00.0"), ("00000001:af:00.1", "0001:af:00.1"),
    ("00010000:E1:00.0", "10000:e1:00.0")])  # a VMD domain: sysfs prints 5 digits
def test_nvidia_smi_bus_ids_become_sysfs_addresses(bus_id, address):
    assert gpu_topology.sysfs_address(bus_id) == address


def test_cpu_lists_read_and_print_as_the_kernel_writes_them():
    cores = gpu_topology.parse_cpulist("0-27,56-83\n")
    assert cores == list(range(28)) + list(range(56, 84))
    assert gpu_topology.format_cpulist(cores) == "0-27,56-83"
    assert gpu_topology.format_cpulist([5, 0, 1, 2]) == "0-2,5"
    assert gpu_topology.parse_cpulist("\n") == []


def test_the_topology_places_each_gpu_on_its_node(two_nodes):
    assert [(gpu.index, gpu.address, gpu.node) for gpu in two_nodes.gpus] == [
        (0, "0000:1a:00.0", 0), (1, "0000:3b:00.0", 0), (2, "0000:86:00.0", 1),
        (3, "0000:af:00.0", 1)]
    assert two_nodes.nodes == {0: [0, 1, 2, 3, 8, 9, 10, 11], 1: [4, 5, 6, 7, 12, 13, 14, 15]}
    assert two_nodes.gpu("GPU-cccc").index == 2 and two_nodes.gpu("7") is None


def test_nvidia_smi_on_the_path_is_asked(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=index,uuid,pci.bus_id ] || exit 9\n"
                      f"printf '{NVIDIA_SMI}'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    assert gpu_topology.read(fake_sys(tmp_path / "sys")).gpus[3].node == 1
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_topology.read(fake_sys(tmp_path / "sys2")).gpus == ()


def test_each_horovod_rank_is_bound_to_its_share_of_its_gpus_node(two_nodes):
    bound = [host.gpu_plan(4, 4, rank, ALL_CORES, two_nodes, horovod_rank(rank))
             for rank in range(4)]
    # Each rank has half of its node's physical cores, each with both its threads.
    assert [plan["bound_to"] for plan in bound] == [
        [0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]]
    assert [plan["gpus"] for plan in bound] == [["0"], ["1"], ["2"], ["3"]]
    assert all(plan["intra_op"] == 4 and plan["inter_op"] == 2 for plan in bound)
    line = host.gpu_line(bound[2])
    assert "GPU 2; bound to cores 4-5,12-13 (NUMA node 1 of GPU 2 (0000:86:00.0)" in line
    assert "intra-op 4, inter-op 2" in line


def test_without_hyperthreads_listed_each_cpu_is_a_core(tmp_path):
    topology = gpu_topology.read(fake_sys(tmp_path, siblings=False), NVIDIA_SMI)
    assert host.gpu_plan(4, 4, 1, ALL_CORES, topology, horovod_rank(1))["bound_to"] == [
        8, 9, 10, 11]


def test_a_ranks_gpu_follows_cuda_visible_devices(two_nodes):
    # Two ranks given GPUs 3 and 1 (by UUID for one): each takes its node's cores alone.
    environ = {"CUDA_VISIBLE_DEVICES": "3,GPU-bbbb"}
    first = host.gpu_plan(2, 2, 0, ALL_CORES, two_nodes, horovod_rank(0, 2, **environ))
    second = host.gpu_plan(2, 2, 1, ALL_CORES, two_nodes, horovod_rank(1, 2, **environ))
    assert first["bound_to"] == two_nodes.nodes[1] and second["bound_to"] == two_nodes.nodes[0]


def test_a_multi_worker_task_is_bound_to_the_node_of_its_gpus(two_nodes):
    tf_config = {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.1:2223"]},
                 "task": {"type": "worker", "index": 1}}
    environ = {"TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": "2,3"}
    plan = host.gpu_plan(2, 2, 1, ALL_CORES, two_nodes, environ)
    assert plan["bound_to"] == two_nodes.nodes[1] and plan["inter_op"] == 4
    environ["CUDA_VISIBLE_DEVICES"] = "1,2"  # a node each: not bound
    plan = host.gpu_plan(2, 2, 1, ALL_CORES, two_nodes, environ)
    assert plan["bound_to"] is None and plan["numa"] == "its GPUs sit on NUMA nodes 0,1"


def test_only_the_cores_a_rank_may_use_are_split(two_nodes):
    # A launcher that already gave this rank cores 8-15: node 0's part of them is 8-11.
    plan = host.gpu_plan(4, 4, 1, list(range(8, 16)), two_nodes, horovod_rank(1))
    assert plan["bound_to"] == [10, 11]
    plan = host.gpu_plan(4, 4, 1, [4, 5], two_nodes, horovod_rank(1))
    assert plan["bound_to"] is None and "no core this process may run on" in plan["numa"]


def test_a_gpu_without_numa_node_is_not_bound(tmp_path):
    gpu_nodes = dict(GPU_NODES, **{"0000:3b:00.0": "-1"})
    del gpu_nodes["0000:86:00.0"]  # and one without the file
    topology = gpu_topology.read(fake_sys(tmp_path, gpu_nodes=gpu_nodes), NVIDIA_SMI)
    for rank, numa in ((1, "GPU 1 (0000:3b:00.0) has no NUMA node (numa_node -1)"),
                       (2, "GPU 2 (0000:86:00.0) has no NUMA node (numa_node -1)")):
        plan = host.gpu_plan(4, 4, rank, ALL_CORES, topology, horovod_rank(rank))
        assert plan["bound_to"] is None and plan["numa"] == numa
        assert "not bound: " + numa in host.gpu_line(plan)
        assert plan["intra_op"] == 4  # the host's cores split between its ranks, as on a CPU
    # GPU 0 is the only placed GPU of node 0: its rank takes the whole node.
    plan = host.gpu_plan(4, 4, 0, ALL_CORES, topology, horovod_rank(0))
    assert plan["bound_to"] == topology.nodes[0]


def test_one_numa_node_or_one_process_is_not_bound(tmp_path, two_nodes):
    one_node = gpu_topology.read(fake_sys(tmp_path / "one", node_cores={0: "0-15"}),
                                 NVIDIA_SMI)
    plan = host.gpu_plan(4, 4, 1, ALL_CORES, one_node, horovod_rank(1))
    assert plan["bound_to"] is None and plan["numa"] == "one NUMA node"
    everything = host.gpu_plan(4, 1, None, ALL_CORES, two_nodes, {})
    assert everything["bound_to"] is None and everything["gpus"] == ["0", "1", "2", "3"]
    assert everything["intra_op"] == 16 and everything["inter_op"] == 8


@pytest.mark.parametrize("gpus, cores, inter_op", [
    (1, 16, host.INTER_OP_THREADS), (8, 96, 16), (8, 6, 6), (8, 2, host.INTER_OP_THREADS),
    (1, 1, host.INTER_OP_THREADS)])
def test_inter_op_threads_grow_with_the_gpus_a_process_drives(gpus, cores, inter_op):
    assert host.gpu_inter_op_threads(gpus, cores) == inter_op


def test_gpu_variables_are_set_only_where_the_user_did_not():
    environ = {"TF_GPU_THREAD_MODE": "global", "CUDA_DEVICE_ORDER": ""}
    host.set_unless_given(environ, {**host.GPU_THREADS, **host.GPU_ORDER})
    assert environ == {"TF_GPU_THREAD_MODE": "global", "TF_GPU_THREAD_COUNT": "2",
                       "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_configure_threads_on_gpus_binds_sets_the_gpu_variables_and_says_so(python, tmp_path):
    # TensorFlow made to list 4 GPUs and the host made of the fake topology: rank 1 of 4 on a
    # machine whose allowed cores are node 0's first ones.
    code = f"""
import functools, json, os
import tensorflow as tf
from launch import gpu_topology, host
listed = tf.config.list_physical_devices
tf.config.list_physical_devices = lambda kind=None: ["GPU"] * 4 if kind == "GPU" else listed(kind)
gpu_topology.read = functools.partial(gpu_topology.read, {fake_sys(tmp_path)!r}, {NVIDIA_SMI!r})
allowed = sorted(os.sched_getaffinity(0))
t = host.configure_threads()
print(json.dumps([t["bound_to"], allowed, sorted(os.sched_getaffinity(0)),
                  tf.config.threading.get_inter_op_parallelism_threads(),
                  *(os.environ.get(name) for name in
                    ("TF_GPU_THREAD_MODE", "TF_GPU_THREAD_COUNT", "CUDA_DEVICE_ORDER"))]))
"""
    result = run([python, "-c", code], env={**horovod_rank(1), "TF_GPU_THREAD_COUNT": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    bound_to, allowed, affinity, inter_op, mode, count, order = json.loads(result.stdout)
    expected = host.gpu_plan(4, 4, 1, allowed, gpu_topology.read(fake_sys(tmp_path / "same"),
                                                                  NVIDIA_SMI), horovod_rank(1))
    assert bound_to == affinity == expected["bound_to"]
    assert set(bound_to) <= set(NODE_CORES_0)
    assert inter_op == host.INTER_OP_THREADS
    assert (mode, count, order) == ("gpu_private", "3", "PCI_BUS_ID")
    assert (f"threads: GPU 1; bound to cores {gpu_topology.format_cpulist(bound_to)} "
            f"(NUMA node 0 of GPU 1 (0000:3b:00.0)") in result.stderr
