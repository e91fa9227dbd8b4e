"""The commands that start a training job on one node or on several; the logic behind
launch/single_node.sh and launch/multi_node.sh, which print the command they run.

  python -m launch.launcher single_node [--np N] [--mode=horovod|mirrored] \\
      [--module=trainer.cross_validate] -- TRAINER FLAGS
  python -m launch.launcher multi_node --hosts=host1:4,host2:4 [--backend=horovod|tf] \\
      [--network_interface=eth0] -- TRAINER FLAGS

Horovod: one process per GPU (per slot on a CPU machine), `horovodrun --gloo -H`. tf: one
MultiWorkerMirroredStrategy worker per host, each with a generated TF_CONFIG, started over ssh
(or directly, for hosts that are this machine), each mirrored over its host's GPUs.

Without --mode / --backend, GPUs get tf.distribute (NCCL inside TensorFlow, nothing to build)
unless this environment's Horovod was built with NCCL (launch/horovod_build.py): Horovod built
with Gloo only moves every GPU tensor through host memory. Without GPUs: Horovod over Gloo.

A mistake in the launcher's own flags (a host list that is not host[:slots](,host[:slots])*, a
port out of range, a stray argument) is one `error:` line on stderr and exit code 2, before
anything starts.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

from launch import entry
from launch import horovod_build

TRAINER_MODULE = "trainer.main"
TRAINER = ("-m", TRAINER_MODULE)
SINGLE_NODE_MODULES = (TRAINER_MODULE, "trainer.cross_validate")  # they take the same flags
BASE_PORT = 23456  # MultiWorkerMirroredStrategy's first worker port; host i uses BASE_PORT + i
PORTS = (1024, 65535)  # the TCP ports a worker may listen on without root
_HOST = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
HOSTS_ITEM = re.compile(_HOST + r"(?::(\d+))?")  # host[:slots], an item of --hosts
HOSTFILE_LINE = re.compile(_HOST + r"(?:\s+slots=(\d+)|:(\d+))?")  # host slots=N, host:N
LOCAL_HOSTS = ("localhost", "127.0.0.1")
POLL_SECONDS = 0.5
GRACE_SECONDS = 30  # for the survivors to save a checkpoint and exit, before SIGKILL
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def horovodrun():
    """The horovodrun beside this Python (the project's .venv), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    return beside if os.path.exists(beside) else "horovodrun"


def gpu_count():
    """NVIDIA GPUs on this machine (0 without nvidia-smi)."""
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def parse_hosts(hosts=None, hostfile=None):
    """[(host, slots)] from "h1:4,h2:4" or a hostfile of "host slots=N" (or "host:N") lines;
    entry.UserError naming the item, or the file and line, that is not one."""
    if hosts and hostfile:
        raise entry.UserError("give --hosts or --hostfile, not both")
    entries = []
    if hostfile:
        entries = _hostfile_entries(hostfile)
    elif hosts:
        entries = _hosts_entries(hosts)
    if not entries:
        raise entry.UserError("no hosts: give --hosts=host1:4,host2:4 or --hostfile=FILE")
    return entries


def _hosts_entries(hosts):
    entries = []
    for item in hosts.split(","):
        match = HOSTS_ITEM.fullmatch(item)
        if not match:
            what = f"{item!r} is not host[:slots]" if item else "an empty item"
            raise entry.UserError(f"--hosts={hosts}: {what}; expected "
                                  f"host[:slots](,host[:slots])* without spaces, e.g. "
                                  f"host1:4,host2:4")
        entries.append(_host_entry(match.group(1), match.group(2), f"--hosts={hosts}"))
    return entries


def _hostfile_entries(hostfile):
    try:
        with open(hostfile) as f:
            lines = f.readlines()
    except OSError as error:
        raise entry.UserError(f"--hostfile {entry.path_error(error)}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = HOSTFILE_LINE.fullmatch(line)
        if not match:
            raise entry.UserError(f"{hostfile}:{number}: {line!r} is not 'host slots=N', "
                                  f"'host:N' or 'host'")
        entries.append(_host_entry(match.group(1), match.group(2) or match.group(3),
                                   f"{hostfile}:{number}"))
    return entries


def _host_entry(name, slots, where):
    if slots is not None and int(slots) < 1:
        raise entry.UserError(f"{where}: {name} needs at least one slot, not {slots}")
    return name, int(slots or 1)


def check_ports(base_port, hosts):
    """Refuses worker ports (base_port, base_port + 1, ... one per host) outside PORTS."""
    low, high = PORTS
    last = base_port + len(hosts) - 1
    if not low <= base_port <= high:
        raise entry.UserError(f"--base_port={base_port}: must be within {low}-{high}")
    if last > high:
        raise entry.UserError(f"--base_port={base_port}: {len(hosts)} hosts need ports "
                              f"{base_port}-{last}, past {high}")


def stray_arguments(trainer_flags):
    """The arguments that are neither a flag nor the value of the flag before them (`--name
    value`): e.g. `:4,` and `host2:4` of `--hosts=host1 :4, host2:4`, split by the shell."""
    stray = []
    for previous, argument in zip([None] + trainer_flags, trainer_flags):
        takes_value = previous is not None and previous.startswith("-") and "=" not in previous
        if not argument.startswith("-") and not takes_value:
            stray.append(argument)
    return stray


def uses_tf_distribute(gpus, horovod_nccl):
    """Whether a job on GPUs runs tf.distribute when neither --mode nor --backend says: unless
    Horovod's collectives are NCCL's (Gloo moves every GPU tensor through host memory), for
    tf.distribute's NCCL is inside TensorFlow."""
    return gpus > 0 and not horovod_nccl


def single_node_command(python, trainer_flags, gpus, processes=None, mode=None,
                        module=TRAINER_MODULE, horovod_nccl=False):
    """(command, environment additions) for one machine; `module` is the entry point run
    (trainer.main, or another that takes the training flags: trainer.cross_validate). `mode`
    None: --np N asks for Horovod; else uses_tf_distribute decides on several GPUs."""
    trainer = ("-m", module)
    if mode is None:
        mirrored = not processes and gpus > 1 and uses_tf_distribute(gpus, horovod_nccl)
        mode = "mirrored" if mirrored else "horovod"
    if mode == "mirrored":
        return [python, *trainer, "--strategy=mirrored", *trainer_flags], {}
    processes = processes or gpus or 1
    if processes == 1:
        return [python, *trainer, *trainer_flags], {}
    # Gloo is the controller (Horovod is built without MPI); NCCL, if built, moves GPU tensors.
    return ([horovodrun(), "--gloo", "-np", str(processes), "-H", f"localhost:{processes}",
             python, *trainer, *trainer_flags], {})


def horovod_command(python, trainer_flags, hosts, network_interface=None, controller="gloo"):
    slots = sum(count for _, count in hosts)
    command = [horovodrun(), "-np", str(slots),
               "-H", ",".join(f"{name}:{count}" for name, count in hosts), f"--{controller}"]
    if network_interface:
        command += ["--network-interface", network_interface]
    return command + [python, *TRAINER, *trainer_flags]


def tf_config(hosts, index, base_port=BASE_PORT):
    workers = [f"{name}:{base_port + i}" for i, (name, _) in enumerate(hosts)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def tf_commands(python, trainer_flags, hosts, base_port=BASE_PORT, repo=REPO):
    """One command per host: a MultiWorkerMirroredStrategy worker with its TF_CONFIG."""
    commands = []
    for index, (name, _) in enumerate(hosts):
        config = json.dumps(tf_config(hosts, index, base_port))
        worker = [python, *TRAINER, "--strategy=multi_worker", *trainer_flags]
        if name in LOCAL_HOSTS:
            commands.append((name, worker, {"TF_CONFIG": config}))
        else:
            remote = (f"cd {shlex.quote(repo)} && TF_CONFIG={shlex.quote(config)} "
                      f"{shlex.join(worker)}")
            commands.append((name, ["ssh", name, remote], {}))
    return commands


def _show(command, environment=None):
    prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in (environment or {}).items())
    print("+ " + (prefix + " " if prefix else "") + shlex.join(command), flush=True)


def _run_all(commands, grace_seconds=GRACE_SECONDS):
    """Starts every host's worker. When one fails, the others get SIGTERM (a clean stop with a
    checkpoint), then SIGKILL after `grace_seconds`: no worker waits forever in a collective
    for a dead peer. Returns the first non-zero exit code, else 0."""
    processes = []
    try:
        for _, command, environment in commands:
            _show(command, environment)
            processes.append(subprocess.Popen(command, env={**os.environ, **environment}))
    except OSError:  # a command that is not there: the workers already started must not wait
        _stop(processes, grace_seconds)
        raise
    while any(process.poll() is None for process in processes):
        failed = [i for i, process in enumerate(processes) if process.poll()]
        if failed:
            index = failed[0]
            print(f"error: worker {index} ({commands[index][0]}) exited with code "
                  f"{processes[index].returncode}; stopping the others", file=sys.stderr,
                  flush=True)
            _stop(processes, grace_seconds)
            break
        time.sleep(POLL_SECONDS)
    codes = [process.wait() for process in processes]
    return next((code for code in codes if code), 0)


def _stop(processes, grace_seconds):
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are the project's one error line and exit code 2, not its usage
    text."""

    def error(self, message):
        entry.say_error(f"{message} (--help lists the flags)")
        sys.exit(entry.USAGE_EXIT_CODE)


def _parser():
    parser = _Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("layout", choices=["single_node", "multi_node"])
    parser.add_argument("--np", type=int, default=None, help="processes (single node)")
    parser.add_argument("--mode", choices=["horovod", "mirrored"], default=None,
                        help="default: mirrored on GPUs unless Horovod has NCCL")
    parser.add_argument("--module", choices=SINGLE_NODE_MODULES, default=TRAINER_MODULE,
                        help="the entry point run (single node)")
    parser.add_argument("--hosts", help="host1:4,host2:4 (multi node)")
    parser.add_argument("--hostfile", help="lines of 'host slots=N' (multi node)")
    parser.add_argument("--backend", choices=["horovod", "tf"], default=None,
                        help="default: tf on GPUs unless Horovod has NCCL (judged on this "
                             "host), else horovod")
    parser.add_argument("--network_interface", help="Horovod's --network-interface")
    parser.add_argument("--controller", choices=["gloo", "mpi"], default="gloo",
                        help="mpi only where Horovod was built with MPI (setup.sh does not)")
    parser.add_argument("--base_port", type=int, default=BASE_PORT,
                        help=f"first worker port of --backend=tf ({PORTS[0]}-{PORTS[1]})")
    parser.add_argument("--grace_seconds", type=float, default=GRACE_SECONDS,
                        help="after a worker fails, the others' time to stop before SIGKILL")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    return parser


def commands_of(args, trainer_flags, python=sys.executable):
    """[(host, command, environment additions)] of the parsed flags; entry.UserError for a
    mistake in them."""
    stray = stray_arguments(trainer_flags)
    if stray:
        raise entry.UserError(f"unexpected argument(s): {' '.join(stray)} (the trainer's "
                              f"flags go as --name=value; --hosts takes host1:4,host2:4 "
                              f"without spaces)")
    if args.np is not None and args.np < 1:
        raise entry.UserError(f"--np={args.np}: must be at least 1")
    if args.grace_seconds < 0:
        raise entry.UserError(f"--grace_seconds={args.grace_seconds}: must not be negative")
    if args.controller == "mpi" and not horovod_build.has_mpi():
        raise entry.UserError("--controller=mpi: this environment's Horovod is built without "
                              "MPI (launch/setup.sh builds Gloo); leave the flag out, Gloo "
                              "is the controller")
    gpus = gpu_count()
    if args.layout == "single_node":
        command, environment = single_node_command(python, trainer_flags, gpus, args.np,
                                                   args.mode, args.module,
                                                   horovod_build.has_nccl())
        return [("localhost", command, environment)]
    if args.module != TRAINER_MODULE:
        raise entry.UserError("--module is for single_node; multi_node runs trainer.main")
    hosts = parse_hosts(args.hosts, args.hostfile)
    check_ports(args.base_port, hosts)
    backend = args.backend or ("tf" if uses_tf_distribute(gpus, horovod_build.has_nccl())
                               else "horovod")
    if backend == "horovod":
        return [(None, horovod_command(python, trainer_flags, hosts, args.network_interface,
                                       args.controller), {})]
    return tf_commands(python, trainer_flags, hosts, args.base_port)


def main(argv=None):
    args, trainer_flags = _parser().parse_known_args(argv)
    trainer_flags = [flag for flag in trainer_flags if flag != "--"]
    try:
        commands = commands_of(args, trainer_flags)
    except entry.UserError as error:
        entry.say_error(error)
        return entry.USAGE_EXIT_CODE
    if args.dry_run:
        for _, command, environment in commands:
            _show(command, environment)
        return 0
    try:
        return _run_all(commands, args.grace_seconds)
    except OSError as error:  # horovodrun or ssh missing
        entry.say_error(entry.path_error(error))
        return entry.FAULT_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
