"""How many of our processes share this host, and TensorFlow's thread pools sized to match.

Every entry point calls `configure_threads()` before TensorFlow runs its first op. TensorFlow's
default is one intra-op thread per core in every process, so two processes on two cores run
four busy threads and each step waits on the other's. Splitting the cores between the
processes of this host keeps each one to its share.
"""

import json
import os

# Low, so that the cores go to the intra-op pool that runs the convolutions; two rather than one
# so that a collective op that blocks waiting for its peers never starves the ops it waits on.
INTER_OP_THREADS = 2

# Launchers that tell each process how many processes they started on its host.
_LOCAL_SIZE_VARIABLES = (
    "HOROVOD_LOCAL_SIZE",  # horovodrun (Gloo)
    "OMPI_COMM_WORLD_LOCAL_SIZE",  # Open MPI's mpirun
    "MPI_LOCALNRANKS",  # MPICH's mpiexec
)


def available_cores():
    """The cores this process may run on (affinity, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def processes_on_this_host(environ=None):
    """The number of this job's processes on this host, from what the launcher set.

    Horovod and MPI launchers say it directly; with `TF_CONFIG`, it is the number of tasks whose
    address has this task's host. A process started by hand is alone.
    """
    environ = os.environ if environ is None else environ
    for name in _LOCAL_SIZE_VARIABLES:
        if environ.get(name):
            return int(environ[name])
    if environ.get("TF_CONFIG"):
        return _tasks_on_my_host(json.loads(environ["TF_CONFIG"]))
    return 1


def _tasks_on_my_host(tf_config):
    cluster, task = tf_config.get("cluster", {}), tf_config.get("task")
    if not task:
        return 1
    my_host = _host(cluster[task["type"]][int(task["index"])])
    addresses = [address for tasks in cluster.values() for address in tasks]
    return sum(_host(address) == my_host for address in addresses)


def _host(address):
    return address.rsplit(":", 1)[0]


def thread_counts(processes, cores):
    """(intra-op, inter-op) threads for one of `processes` processes sharing `cores` cores."""
    intra = max(1, cores // max(1, processes))
    return intra, INTER_OP_THREADS


def configure_threads(processes=None):
    """Sizes TensorFlow's thread pools for this process's share of the host.

    Args:
      processes: how many processes share the host; by default what the launcher says.

    Returns:
      A dict to log: cores, processes, intra_op and inter_op thread counts.

    Raises:
      RuntimeError: TensorFlow already ran an op, so its pools can no longer be sized.
    """
    import tensorflow as tf  # here, so that the counting above works without TensorFlow

    processes = processes or processes_on_this_host()
    cores = available_cores()
    intra, inter = thread_counts(processes, cores)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as error:
        raise RuntimeError(
            "configure_threads() must run before TensorFlow runs its first op "
            f"(call it at the top of the entry point): {error}") from error
    return {"cores": cores, "processes": processes, "intra_op": intra, "inter_op": inter}
