"""What Horovod in this environment was built with: the report of `horovodrun --check-build`
that launch/setup.sh records in the environment once the build has passed its checks.

Read from a file, without importing Horovod or TensorFlow, so that the launcher decides in
milliseconds whether Horovod's GPU collectives are NCCL or Gloo (which moves GPU tensors
through host memory), and whether it has an MPI controller.
"""

import os
import sys

RECORD = "agenet-horovod-build"  # in the environment's folder (sys.prefix)
SECTIONS = {"Available Controllers:": "controllers",
            "Available Tensor Operations:": "operations"}


def built(prefix=sys.prefix):
    """{"controllers": {...}, "operations": {...}}: the names checked ([X]) in each section of
    the recorded report; None when the environment has no record (not made by setup.sh)."""
    try:
        with open(os.path.join(prefix, RECORD)) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    found = {name: set() for name in SECTIONS.values()}
    section = None
    for line in lines:
        line = line.strip()
        if line.endswith(":"):
            section = SECTIONS.get(line)
        elif section and line.startswith("[X]"):
            found[section].add(line[3:].strip())
    return found


def has_nccl(prefix=sys.prefix):
    """Whether Horovod's tensor operations on GPUs are NCCL's."""
    return "NCCL" in (built(prefix) or {}).get("operations", ())


def has_mpi(prefix=sys.prefix):
    """Whether horovodrun can use MPI as its controller (--mpi)."""
    return "MPI" in (built(prefix) or {}).get("controllers", ())


def collectives(prefix=sys.prefix):
    """Horovod's collectives on GPUs, in a few words for a report."""
    if built(prefix) is None:
        return f"unknown: no {RECORD} in {prefix} (made by launch/setup.sh)"
    return "NCCL" if has_nccl(prefix) else "Gloo through host memory"
