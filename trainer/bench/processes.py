"""How a throughput cell or a time-to-accuracy race runs in processes of its own.

A distribution is written `one_device`, `horovod:N` (N processes over Gloo on this host) or
`mirrored:N` (one process, N logical devices without a GPU); `Distribution.parse` reads it, for
the flags and for the processes alike. The processes run `trainer.bench.worker`, which prints its
result as one line marked with RESULT_PREFIX.
"""

import dataclasses
import json
import os
import sys

from trainer import strategy

RESULT_PREFIX = "BENCH_RESULT "  # marks a worker's result line in its process's output
# The strategies a measurement can start on this host by itself (multi_worker needs a cluster's
# TF_CONFIG; auto is a choice, not a strategy). Each but one_device takes a count.
LAUNCHABLE = tuple(name for name in strategy.STRATEGIES if name not in ("auto", "multi_worker"))
COUNTED = tuple(name for name in LAUNCHABLE if name != "one_device")
SYNTAX = "one_device, " + ", ".join(f"{name}:N" for name in COUNTED)


@dataclasses.dataclass(frozen=True)
class Distribution:
    strategy: str  # one of LAUNCHABLE, a name of trainer.strategy.STRATEGIES
    count: int = 1  # horovod: processes; mirrored: logical devices of its one process

    @classmethod
    def parse(cls, text):
        """The distribution written `text`; ValueError naming it when it is none."""
        name, colon, count = text.partition(":")
        if name == "one_device" and not colon:
            return cls(name)
        if name in COUNTED and count.isdigit() and int(count) >= 1:
            return cls(name, int(count))
        raise ValueError(f"{text!r} is not a distribution: {SYNTAX} (N >= 1)")

    def __str__(self):
        return self.strategy if self.strategy == "one_device" else f"{self.strategy}:{self.count}"

    @property
    def processes(self):
        return self.count if self.strategy == "horovod" else 1

    @property
    def logical_cpus(self):
        """trainer.strategy.create's logical_cpus: the mirrored devices (0: the machine's)."""
        return self.count if self.strategy == "mirrored" else 0

    def command(self, args):
        """The command line that runs `args` (a Python command) in this distribution's
        processes: under horovodrun for horovod:N, as it is otherwise."""
        if self.strategy != "horovod":
            return list(args)
        horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
        return [horovodrun, "--gloo", "-np", str(self.count), "-H", f"localhost:{self.count}",
                *args]


def worker_command(kind, request, distribution):
    """The command that runs one `kind` ("cell" or "race") of `request` (a dict, as JSON) in
    the processes of `distribution` (its text)."""
    return Distribution.parse(distribution).command(
        [sys.executable, "-m", "trainer.bench.worker", kind, json.dumps(request)])


def result_line(result):
    return RESULT_PREFIX + json.dumps(result)


def read_result(line):
    """The result a worker's output `line` carries, or None. Under horovodrun the line starts
    with the rank's tag (`[1]<stdout>:`)."""
    _, marked, result = line.partition(RESULT_PREFIX)
    return json.loads(result) if marked else None
