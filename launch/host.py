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
from 0.79-0.84x to 0.92-0.93x of one process's images/s (README). With GPUs the cores only
feed them: nothing is bound.

The tasks of an srun step of several know their place from SLURM's variables (SLURM_PROCID,
SLURM_LOCALID and the step's layout): `configure_threads` first writes the TF_CONFIG those imply
(launch.slurm), from which this process's share of the host and the strategy's cluster follow.
"""

import json
import os
import socket

from launch import slurm

# Low, so that the cores go to the intra-op pool that runs the convolutions; two rather than one
# so that a collective op that blocks waiting for its peers never starves the ops it waits on.
INTER_OP_THREADS = 2
# A process bound to its own cores: its ops run one at a time there (see the module's text).
BOUND_INTER_OP_THREADS = 1

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
    for name in _LOCAL_RANK_VARIABLES:
        if environ.get(name):
            return int(environ[name])
    tf_config = _tf_config(environ)
    if tf_config and tf_config.get("task"):
        mine, on_my_host = _my_address_and_neighbours(tf_config)
        return on_my_host.index(mine)
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


def configure_threads(processes=None):
    """Sizes TensorFlow's thread pools for this process's share of the host, and binds the
    process to its own cores when it is one of several ranks computing on this host's CPU.
    In a task of an srun step of several, first writes the step's TF_CONFIG into the
    environment (launch.slurm.export_tf_config), where the strategy finds its cluster.

    Args:
      processes: how many processes share the host; by default what the launcher says. Given
        (a pool of workers that have no rank), the process is not bound.

    Returns:
      A dict to log: cores, processes, intra_op and inter_op thread counts, and the CPU ids
      the process was bound to (None if it was not).

    Raises:
      RuntimeError: TensorFlow already ran an op, so its pools can no longer be sized.
      launch.entry.UserError: srun's variables do not describe a step the workers can form.
    """
    import tensorflow as tf  # here, so that the counting above works without TensorFlow

    slurm.export_tf_config()
    rank = None if processes else local_rank()
    processes = processes or processes_on_this_host()
    cpus = sorted(os.sched_getaffinity(0))
    bound_to = None
    if processes > 1 and rank is not None and not tf.config.list_physical_devices("GPU"):
        bound_to = own_cores(cpus, processes, rank)
        intra, inter = len(bound_to), BOUND_INTER_OP_THREADS
    else:
        intra, inter = thread_counts(processes, len(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as error:
        raise RuntimeError(
            "configure_threads() must run before TensorFlow runs its first op "
            f"(call it at the top of the entry point): {error}") from error
    if bound_to:
        bind(bound_to)
    return {"cores": len(cpus), "processes": processes, "intra_op": intra, "inter_op": inter,
            "bound_to": bound_to}


def free_ports(count):
    """`count` TCP ports free on 127.0.0.1 now, for local workers (tests, checks)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
