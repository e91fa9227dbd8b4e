"""How many of our processes share this host, and TensorFlow's thread pools sized to match.

Every entry point calls `configure_threads()` before TensorFlow runs its first op. TensorFlow's
default is one intra-op thread per core in every process, so two processes on two cores run
four busy threads and each step waits on the other's. Splitting the cores between the
processes of this host keeps each one to its share.

A split by thread counts alone is not enough when the processes compute on the CPU and meet
at every step (Horovod, MultiWorkerMirroredStrategy): the scheduler still moves their threads
over all the cores, one rank falls behind the other by a fraction of a step, and the first one
waits for it at the all-reduce. Each process that knows its place on the host (its local rank)
is therefore bound to its own cores and runs one inter-op thread, the way `mpirun --bind-to
core` runs CPU jobs. On a 2-core machine this took Levi & Hassner under `horovodrun -np 2`
from 0.79-0.84x to 0.92-0.93x of one process's images/s (README).

With GPUs the cores feed them. Each GPU gets private threads that launch its kernels
(TF_GPU_THREAD_MODE=gpu_private), so that its launches never queue behind the input pipeline's
or another GPU's work (TensorFlow's GPU performance guide, "GPU host thread contention"). The
inter-op pool then runs each replica's host-side ops (iterator, loss scaling, the launch of its
all-reduce), so it grows with the GPUs the process drives (`gpu_inter_op_threads`). On a host of
several NUMA nodes, a rank (a Horovod rank, or one of several multi_worker tasks on the host)
whose GPUs sit on one node is bound to that node's cores, shared with the other ranks whose
GPUs sit there: its input pipeline and launches then use memory next to its GPU's PCI link
(`numa_cores`). One process driving every GPU is not bound. These rules are read from
tf_cnn_benchmarks and NVIDIA's examples, not yet measured on a GPU (BUILD_NOTES.md, "Threads
with GPUs", gives the command that measures them).

TF_NUM_INTRAOP_THREADS and TF_NUM_INTEROP_THREADS, TensorFlow's own variables, override the
counts chosen here (launch/gpu_check.sh measures a few inter-op counts with them).

The tasks of an srun step of several know their place from SLURM's variables (SLURM_PROCID,
SLURM_LOCALID and the step's layout): `configure_threads` first writes the TF_CONFIG those imply
(launch.slurm), from which this process's share of the host and the strategy's cluster follow.
"""

import json
import os
import socket
import sys

from launch import gpu_topology
from launch import slurm

# Low, so that the cores go to the intra-op pool that runs the convolutions; two rather than one
# so that a collective op that blocks waiting for its peers never starves the ops it waits on.
INTER_OP_THREADS = 2
# A process bound to its own cores: its ops run one at a time there (see the module's text).
BOUND_INTER_OP_THREADS = 1
# With GPUs, the CPU rule's two per device, for each GPU the process drives (see the module's
# text; tf_cnn_benchmarks gives the inter-op pool every core left, NVIDIA's Horovod examples at
# least 2 per one-GPU rank).
INTER_OP_THREADS_PER_GPU = 2
# Read once, when CUDA starts (TensorFlow listing its GPUs): TensorFlow's GPU numbers, and those
# of CUDA_VISIBLE_DEVICES, become nvidia-smi's (PCI bus order) rather than fastest first.
GPU_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
# Read when TensorFlow creates its GPU devices (its first op): two threads per GPU, one for its
# kernels and one for its copies (TensorFlow's default count, as tf_cnn_benchmarks sets it).
GPU_THREADS = {"TF_GPU_THREAD_MODE": "gpu_private", "TF_GPU_THREAD_COUNT": "2"}
# TensorFlow's own variables: a count the user gives wins over ours.
_GIVEN_COUNTS = {"intra_op": "TF_NUM_INTRAOP_THREADS", "inter_op": "TF_NUM_INTEROP_THREADS"}

# Launchers that tell each process how many processes they started on its host, and which of
# them it is.
_LOCAL_SIZE_VARIABLES = (
    "HOROVOD_LOCAL_SIZE",  # horovodrun (Gloo)
    "OMPI_COMM_WORLD_LOCAL_SIZE",  # Open MPI's mpirun
    "MPI_LOCALNRANKS",  # MPICH's mpiexec
)
_LOCAL_RANK_VARIABLES = ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def available_cores():
    """The cores this process may run on (affinity, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def processes_on_this_host(environ=None):
    """The number of this job's processes on this host, from what the launcher set.

    Horovod and MPI launchers say it directly; with `TF_CONFIG` (or an srun step, which implies
    one), it is the number of tasks whose address has this task's host. A process started by
    hand is alone.
    """
    environ = os.environ if environ is None else environ
    for name in _LOCAL_SIZE_VARIABLES:
        if environ.get(name):
            return int(environ[name])
    tf_config = _tf_config(environ)
    return _tasks_on_my_host(tf_config) if tf_config else 1


def local_rank(environ=None):
    """This process's index among the job's processes on this host; None if no launcher said.

    With `TF_CONFIG`, the position of this task's address among the addresses on its host, in
    the order of the cluster (the same order in every task's copy); in an srun step, that is
    SLURM_LOCALID (launch.slurm checks that they agree).
    """
    environ = os.environ if environ is None else environ
    rank = _launcher_local_rank(environ)
    if rank is not None:
        return rank
    tf_config = _tf_config(environ)
    if tf_config and tf_config.get("task"):
        mine, on_my_host = _my_address_and_neighbours(tf_config)
        return on_my_host.index(mine)
    return None


def _launcher_local_rank(environ):
    """The local rank a Horovod or MPI launcher gave (then Horovod pins the GPU of that rank)."""
    for name in _LOCAL_RANK_VARIABLES:
        if environ.get(name):
            return int(environ[name])
    return None


def _tf_config(environ):
    """The job's TF_CONFIG: the one given, else the one an srun step implies; None."""
    if environ.get("TF_CONFIG"):
        return json.loads(environ["TF_CONFIG"])
    return slurm.tf_config(environ)


def _tasks_on_my_host(tf_config):
    if not tf_config.get("task"):
        return 1
    return len(_my_address_and_neighbours(tf_config)[1])


def _my_address_and_neighbours(tf_config):
    """This task's address, and every address of the cluster on its host (its own included)."""
    cluster, task = tf_config.get("cluster", {}), tf_config["task"]
    mine = cluster[task["type"]][int(task["index"])]
    addresses = [address for tasks in cluster.values() for address in tasks]
    return mine, [address for address in addresses if _host(address) == _host(mine)]


def _host(address):
    return address.rsplit(":", 1)[0]


def thread_counts(processes, cores):
    """(intra-op, inter-op) threads for one of `processes` processes sharing `cores` cores."""
    intra = max(1, cores // max(1, processes))
    return intra, INTER_OP_THREADS


def gpu_inter_op_threads(gpus, cores):
    """Inter-op threads of a process that drives `gpus` GPUs on `cores` cores: two per GPU, at
    most one per core, never fewer than the CPU rule's INTER_OP_THREADS."""
    return min(max(INTER_OP_THREADS, INTER_OP_THREADS_PER_GPU * gpus),
               max(INTER_OP_THREADS, cores))


def own_cores(cores, processes, rank):
    """The slice of `cores` (CPU ids) that is the process of local rank `rank` of `processes`."""
    per_process = max(1, len(cores) // processes)
    start = (rank * per_process) % len(cores)
    return cores[start:start + per_process]


def bind(cores):
    """Binds every thread of this process, and those it starts later, to `cores`."""
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), cores)
        except ProcessLookupError:
            pass  # the thread ended meanwhile


def set_unless_given(environ, values):
    """Sets in `environ` each of `values` (name: value) that is not set there already."""
    for name, value in values.items():
        if not environ.get(name):
            environ[name] = value


def driven_gpus(visible_count, topology, environ=None):
    """(mine, sharing): the GPUs this process computes on, and those that all of this job's
    processes on this host compute on; each as CUDA_VISIBLE_DEVICES names it (nvidia-smi's
    index by default).

    A Horovod or MPI rank computes on the GPU of its local rank among those it sees, as
    trainer.strategy.HorovodBackend pins it, and so do its neighbours. Any other process computes
    on every GPU it sees; a multi_worker task cannot see its neighbours' CUDA_VISIBLE_DEVICES,
    so they are taken to share the GPUs nvidia-smi lists.
    """
    environ = os.environ if environ is None else environ
    given = environ.get("CUDA_VISIBLE_DEVICES")
    visible = ([device.strip() for device in given.split(",")] if given
               else [str(index) for index in range(visible_count)])[:visible_count]
    rank = _launcher_local_rank(environ)
    if rank is not None:
        return visible[rank:rank + 1], visible[:processes_on_this_host(environ)]
    return visible, [str(gpu.index) for gpu in topology.gpus]


def numa_cores(mine, sharing, topology, allowed):
    """(cores, why): the CPU ids a rank that computes on the GPUs `mine` is bound to, and in
    which words; (None, why not) when it is not. The physical cores of its GPUs' NUMA node that
    it may run on (`allowed`) are split between the GPUs of `sharing` on that node, in their
    order, and the rank takes its GPUs' shares (as `own_cores` splits a CPU host's cores between
    its ranks), each core with its hyperthreads."""
    if len(topology.nodes) < 2:
        return None, "one NUMA node"
    placed = [topology.gpu(device) for device in mine]
    if not placed or None in placed:
        return None, f"GPU {','.join(mine) or '?'} not listed by nvidia-smi"
    unplaced = [gpu for gpu in placed if gpu.node is None]
    if unplaced:
        return None, (f"GPU {unplaced[0].index} ({unplaced[0].address}) has no NUMA node "
                      f"(numa_node -1)")
    nodes = sorted({gpu.node for gpu in placed})
    if len(nodes) > 1:
        return None, f"its GPUs sit on NUMA nodes {','.join(map(str, nodes))}"
    node = nodes[0]
    cores = [core for core in topology.nodes.get(node, []) if core in allowed]
    if not cores:
        return None, f"NUMA node {node} has no core this process may run on"
    neighbours = []
    for gpu in [topology.gpu(device) for device in sharing] + placed:
        if gpu and gpu.node == node and gpu not in neighbours:
            neighbours.append(gpu)
    bound = sorted({cpu for gpu in placed for cpu in _share_of_physical_cores(
        cores, topology.core_of, len(neighbours), neighbours.index(gpu))})
    gpus = ", ".join(f"{gpu.index} ({gpu.address})" for gpu in placed)
    return bound, (f"NUMA node {node} of GPU {gpus}, its cores shared by {len(neighbours)} "
                   f"GPU{'s' * (len(neighbours) > 1)} of this host's ranks")


def _share_of_physical_cores(cpus, core_of, shares, index):
    """Share `index` of `shares` of the CPU ids `cpus`, split by physical core (`core_of`), so
    that a core's hyperthreads go to one share."""
    physical = {}
    for cpu in cpus:
        physical.setdefault(core_of.get(cpu, cpu), []).append(cpu)
    return [cpu for core in own_cores(list(physical.values()), shares, index) for cpu in core]


def cpu_plan(processes, rank, cpus):
    """Threads and cores of a process computing on the CPU (see the module's text)."""
    if processes > 1 and rank is not None:
        bound_to = own_cores(cpus, processes, rank)
        return {"intra_op": len(bound_to), "inter_op": BOUND_INTER_OP_THREADS,
                "bound_to": bound_to}
    intra, inter = thread_counts(processes, len(cpus))
    return {"intra_op": intra, "inter_op": inter, "bound_to": None}


def gpu_plan(visible_count, processes, rank, cpus, topology, environ=None):
    """Threads and cores of a process that sees `visible_count` GPUs, one of `processes` on
    this host (local rank `rank`, None if it has none) allowed on `cpus`. Adds "gpus" (what it
    computes on, as CUDA_VISIBLE_DEVICES names them) and "numa" (why it is bound, or not)."""
    mine, sharing = driven_gpus(visible_count, topology, environ)
    if processes > 1 and rank is not None:
        bound_to, numa = numa_cores(mine, sharing, topology, cpus)
    else:
        bound_to, numa = None, ("one process on this host" if processes == 1
                                else "a pool of workers without ranks")
    intra = len(bound_to) if bound_to else thread_counts(processes, len(cpus))[0]
    return {"intra_op": intra, "inter_op": gpu_inter_op_threads(max(1, len(mine)), intra),
            "bound_to": bound_to, "gpus": mine, "numa": numa}


def configure_threads(processes=None):
    """Sizes TensorFlow's thread pools for this process's share of the host, and binds the
    process to its own cores when it is one of several ranks computing on this host's CPU, or
    on GPUs of a host of several NUMA nodes. With GPUs, first sets CUDA_DEVICE_ORDER and the
    GPU thread mode (unless the user set them) and prints one line saying what was chosen.
    In a task of an srun step of several, first writes the step's TF_CONFIG into the
    environment (launch.slurm.export_tf_config), where the strategy finds its cluster.

    Args:
      processes: how many processes share the host; by default what the launcher says. Given
        (a pool of workers that have no rank), the process is not bound.

    Returns:
      A dict to log: cores, processes, intra_op and inter_op thread counts, and the CPU ids
      the process was bound to (None if it was not); with GPUs also gpus and numa
      (gpu_plan).

    Raises:
      RuntimeError: TensorFlow already ran an op, so its pools can no longer be sized.
      launch.entry.UserError: srun's variables do not describe a step the workers can form.
    """
    import tensorflow as tf  # here, so that the counting above works without TensorFlow

    slurm.export_tf_config()
    rank = None if processes else local_rank()
    processes = processes or processes_on_this_host()
    cpus = sorted(os.sched_getaffinity(0))
    set_unless_given(os.environ, GPU_ORDER)  # before listing the GPUs, which starts CUDA
    gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        set_unless_given(os.environ, GPU_THREADS)
        plan = gpu_plan(gpus, processes, rank, cpus, gpu_topology.read())
    else:
        plan = cpu_plan(processes, rank, cpus)
    for count, variable in _GIVEN_COUNTS.items():
        if os.environ.get(variable, "").isdigit() and int(os.environ[variable]) > 0:
            plan[count] = int(os.environ[variable])
    try:
        tf.config.threading.set_intra_op_parallelism_threads(plan["intra_op"])
        tf.config.threading.set_inter_op_parallelism_threads(plan["inter_op"])
    except RuntimeError as error:
        raise RuntimeError(
            "configure_threads() must run before TensorFlow runs its first op "
            f"(call it at the top of the entry point): {error}") from error
    if plan["bound_to"]:
        bind(plan["bound_to"])
    if gpus:
        print(gpu_line(plan), file=sys.stderr, flush=True)
    return {"cores": len(cpus), "processes": processes, **plan}


def gpu_line(plan):
    """The one line a process on GPUs prints about its threads and cores."""
    where = (f"bound to cores {gpu_topology.format_cpulist(plan['bound_to'])} ({plan['numa']})"
             if plan["bound_to"] else f"not bound: {plan['numa']}")
    modes = ", ".join(f"{name}={os.environ.get(name)}" for name in (*GPU_THREADS, *GPU_ORDER))
    return (f"threads: GPU {','.join(plan['gpus']) or 'none'}; {where}; "
            f"intra-op {plan['intra_op']}, inter-op {plan['inter_op']}; {modes}")


def free_ports(count):
    """`count` TCP ports free on 127.0.0.1 now, for local workers (tests, checks)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
