"""An srun job step as a TensorFlow cluster: each task's TF_CONFIG, from what srun told it.

    srun python -m trainer.main --records=... --model_dir=...   (launch/slurm_multi_worker.sbatch)

Every task of an srun step of several tasks is one MultiWorkerMirroredStrategy worker. Its index
is SLURM_PROCID; every worker's host comes from SLURM_STEP_NODELIST and
SLURM_STEP_TASKS_PER_NODE; the ports from SLURM_JOB_ID. `launch.host.configure_threads`, which
every entry point runs before TensorFlow starts, writes that TF_CONFIG into the process's
environment (`export_tf_config`), so that the thread split and core binding (launch/host.py),
`--strategy=auto`, the checkpoint folders and the preemption handler all follow from it exactly
as from a TF_CONFIG given by hand.

Why not TensorFlow's SlurmClusterResolver: in TF 2.21 its default asks `nvidia-smi` for the
GPUs, and `gpus_per_node=0` (a CPU cluster) divides by zero; and everything above already reads
a TF_CONFIG.

srun places tasks node by node by default (block distribution: tasks 0..k-1 on the first node,
and so on), which is what lets every task compute every other task's address. A step placed
otherwise (`--distribution=cyclic`) is refused with one error line naming the fix.
"""

import json
import os
import re

from launch import entry

# Each job's workers listen on ports of their own, so that two jobs sharing a node never meet:
# job J's tasks on a node use FIRST_PORT + (J % JOB_SLOTS) * MAX_TASKS_PER_NODE + local index,
# all below Linux's ephemeral range (from 32768), where outgoing connections take their ports.
FIRST_PORT = 12000
MAX_TASKS_PER_NODE = 64
JOB_SLOTS = (32768 - FIRST_PORT) // MAX_TASKS_PER_NODE

_BRACKETS = re.compile(r"\[([^\]]*)\]")
_NODELIST_ITEM = re.compile(r"(?:[^,\[\]]|\[[^\]]*\])+")  # commas inside brackets are ranges
_TASKS_ITEM = re.compile(r"(\d+)(?:\(x(\d+)\))?")  # "2", or "2(x3)": 2 tasks on 3 nodes


def in_step_of_several_tasks(environ):
    """Whether this process is one task of an srun step of several. A batch script, or a
    process started by hand inside salloc, is not: it stays one process."""
    return "SLURM_STEP_ID" in environ and int(environ.get("SLURM_STEP_NUM_TASKS") or 1) > 1


def worker_port(job_id, local_index):
    """The port of the `local_index`-th task on its node, in job `job_id`."""
    return FIRST_PORT + (job_id % JOB_SLOTS) * MAX_TASKS_PER_NODE + local_index


def expand_nodelist(nodelist):
    """["n01", "n02", "gpu5"] from SLURM's "n[01-02],gpu5"; ranges keep their zero padding."""
    items = _NODELIST_ITEM.findall(nodelist)
    if not items or ",".join(items) != nodelist:
        raise ValueError(f"not a SLURM node list: {nodelist!r}")
    return [host for item in items for host in _expand_item(item)]


def _expand_item(item):
    match = _BRACKETS.search(item)
    if not match:
        return [item]
    head, tail = item[:match.start()], item[match.end():]
    return [head + number + rest for number in _numbers(match.group(1))
            for rest in _expand_item(tail)]


def _numbers(ranges):
    numbers = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        numbers += [str(n).zfill(len(first)) for n in range(int(first), int(last or first) + 1)]
    return numbers


def expand_tasks_per_node(tasks_per_node):
    """[2, 2, 2, 1] from SLURM's "2(x3),1", in the order of the node list."""
    counts = []
    for item in tasks_per_node.split(","):
        match = _TASKS_ITEM.fullmatch(item)
        if not match:
            raise ValueError(f"not a SLURM tasks-per-node list: {tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def tf_config(environ):
    """This srun task's TF_CONFIG (a dict); None outside an srun step of several tasks.

    Raises:
      entry.UserError: srun's variables are missing, malformed, or describe tasks that are not
        placed node by node.
    """
    if not in_step_of_several_tasks(environ):
        return None
    hosts = _read(environ, "SLURM_STEP_NODELIST", expand_nodelist)
    counts = _read(environ, "SLURM_STEP_TASKS_PER_NODE", expand_tasks_per_node)
    job_id = _read(environ, "SLURM_JOB_ID", int)
    index = _read(environ, "SLURM_PROCID", int)
    if len(counts) != len(hosts) or sum(counts) != int(environ["SLURM_STEP_NUM_TASKS"]):
        raise entry.UserError(
            f"SLURM_STEP_TASKS_PER_NODE={environ['SLURM_STEP_TASKS_PER_NODE']} does not place "
            f"SLURM_STEP_NUM_TASKS={environ['SLURM_STEP_NUM_TASKS']} tasks on the "
            f"{len(hosts)} node(s) of SLURM_STEP_NODELIST={environ['SLURM_STEP_NODELIST']}")
    if max(counts) > MAX_TASKS_PER_NODE:
        raise entry.UserError(f"{max(counts)} tasks on one node: at most {MAX_TASKS_PER_NODE} "
                              f"(each needs a port of its own)")
    placement = [(host, local) for host, count in zip(hosts, counts) for local in range(count)]
    _check_placement(environ, index, *placement[index])
    workers = [f"{host}:{worker_port(job_id, local)}" for host, local in placement]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def _read(environ, name, parse):
    if not environ.get(name):
        raise entry.UserError(f"an srun step of several tasks without {name}: start the "
                              f"workers with srun (launch/slurm_multi_worker.sbatch)")
    try:
        return parse(environ[name])
    except ValueError as error:
        raise entry.UserError(f"{name}={environ[name]}: {error}") from None


def _check_placement(environ, index, host, local):
    """Refuses a task that srun did not put where a node-by-node layout puts it."""
    node = environ.get("SLURMD_NODENAME", host)
    local_id = int(environ.get("SLURM_LOCALID", local))
    if (node, local_id) != (host, local):
        raise entry.UserError(
            f"srun placed task {index} on {node} as its task {local_id}, not on {host} as task "
            f"{local}: the workers' addresses assume tasks placed node by node; start the step "
            f"with srun --distribution=block")


def export_tf_config(environ=None):
    """Writes this srun task's TF_CONFIG into `environ` (the process's, by default), unless
    the process runs under horovodrun or already has a TF_CONFIG. Returns what it wrote, or
    None."""
    environ = os.environ if environ is None else environ
    if "HOROVOD_RANK" in environ or environ.get("TF_CONFIG"):
        return None
    config = tf_config(environ)
    if config:
        environ["TF_CONFIG"] = json.dumps(config)
    return config
