"""The commands that start a training job on one node or on several; the logic behind
launch/single_node.sh and launch/multi_node.sh, which print the command they run.

  python -m launch.launcher single_node [--np N] [--mode=horovod|mirrored] \\
      [--module=trainer.cross_validate] -- TRAINER FLAGS
  python -m launch.launcher multi_node --hosts=host1:4,host2:4 [--backend=horovod|tf] \\
      [--network_interface=eth0] [--controller=gloo|mpi] -- TRAINER FLAGS

Horovod: one process per GPU (per slot on a CPU machine), `horovodrun -H`. tf: one
MultiWorkerMirroredStrategy worker per host, each with a generated TF_CONFIG, started over ssh
(or directly, for hosts that are this machine), each mirrored over its host's GPUs.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

TRAINER_MODULE = "trainer.main"
TRAINER = ("-m", TRAINER_MODULE)
SINGLE_NODE_MODULES = (TRAINER_MODULE, "trainer.cross_validate")  # they take the same flags
BASE_PORT = 23456  # MultiWorkerMirroredStrategy's first worker port; host i uses BASE_PORT + i
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
    """[(host, slots)] from "h1:4,h2:4" or a hostfile of "host slots=N" (or "host:N") lines."""
    entries = []
    if hostfile:
        with open(hostfile) as f:
            for number, line in enumerate(f, 1):
                line = line.split("#")[0].strip()
                if not line:
                    continue
                name, _, rest = line.partition(" ")
                slots = rest.strip().removeprefix("slots=") if rest else None
                entries.append(_host_entry(name if slots else line, slots,
                                           f"{hostfile}:{number}"))
    else:
        for item in (hosts or "").split(","):
            if item.strip():
                entries.append(_host_entry(item.strip(), None, f"--hosts {hosts}"))
    if not entries:
        raise ValueError("no hosts: give --hosts=host1:4,host2:4 or --hostfile=FILE")
    return entries


def _host_entry(name, slots, where):
    if slots is None:
        name, _, slots = name.partition(":")
    try:
        count = int(slots or 1)
    except ValueError:
        raise ValueError(f"{where}: slots of {name!r} must be a number, not {slots!r}") from None
    if count < 1:
        raise ValueError(f"{where}: {name} needs at least one slot")
    return name, count


def single_node_command(python, trainer_flags, gpus, processes=None, mode="horovod",
                        module=TRAINER_MODULE):
    """(command, environment additions) for one machine; `module` is the entry point run
    (trainer.main, or another that takes the training flags: trainer.cross_validate)."""
    trainer = ("-m", module)
    if mode == "mirrored":
        return [python, *trainer, "--strategy=mirrored", *trainer_flags], {}
    processes = processes or gpus or 1
    if processes == 1:
        return [python, *trainer, *trainer_flags], {}
    transport = [] if gpus else ["--gloo"]  # CPU: Gloo; GPU: NCCL inside, Gloo controller
    return ([horovodrun(), *transport, "-np", str(processes), "-H", f"localhost:{processes}",
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
    for _, command, environment in commands:
        _show(command, environment)
        processes.append(subprocess.Popen(command, env={**os.environ, **environment}))
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("layout", choices=["single_node", "multi_node"])
    parser.add_argument("--np", type=int, default=None, help="processes (single node)")
    parser.add_argument("--mode", choices=["horovod", "mirrored"], default="horovod")
    parser.add_argument("--module", choices=SINGLE_NODE_MODULES, default=TRAINER_MODULE,
                        help="the entry point run (single node)")
    parser.add_argument("--hosts", help="host1:4,host2:4 (multi node)")
    parser.add_argument("--hostfile", help="lines of 'host slots=N' (multi node)")
    parser.add_argument("--backend", choices=["horovod", "tf"], default="horovod")
    parser.add_argument("--network_interface", help="Horovod's --network-interface")
    parser.add_argument("--controller", choices=["gloo", "mpi"], default="gloo")
    parser.add_argument("--base_port", type=int, default=BASE_PORT)
    parser.add_argument("--grace_seconds", type=float, default=GRACE_SECONDS,
                        help="after a worker fails, the others' time to stop before SIGKILL")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args, trainer_flags = parser.parse_known_args(argv)
    trainer_flags = [flag for flag in trainer_flags if flag != "--"]
    python = sys.executable
    if args.layout == "single_node":
        command, environment = single_node_command(python, trainer_flags, gpu_count(),
                                                   args.np, args.mode, args.module)
        commands = [("localhost", command, environment)]
    elif args.module != TRAINER_MODULE:
        print("error: --module is for single_node; multi_node runs trainer.main",
              file=sys.stderr)
        return 2
    else:
        try:
            hosts = parse_hosts(args.hosts, args.hostfile)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if args.backend == "horovod":
            commands = [(None, horovod_command(python, trainer_flags, hosts,
                                               args.network_interface, args.controller), {})]
        else:
            commands = tf_commands(python, trainer_flags, hosts, args.base_port)
    if args.dry_run:
        for _, command, environment in commands:
            _show(command, environment)
        return 0
    return _run_all(commands, args.grace_seconds)


if __name__ == "__main__":
    sys.exit(main())
