"""Internal: one throughput cell or one time-to-accuracy race, in the process(es) started for it
by trainer.benchmark or trainer.time_to_accuracy (users never call it). It prints its result as
one line marked with processes.RESULT_PREFIX.

    python -m trainer.bench.worker cell '{"cell": {...}, "warmup_steps": 5, "window_steps": 5,
                                          "windows": 5}'
    python -m trainer.bench.worker race '{"name": "baseline", "model": "levi_hassner", ...}'
"""

import json

from launch import entry
from trainer import cli
from trainer.bench import processes
from trainer.bench import races
from trainer.bench import throughput

KINDS = ("cell", "race")


def main(argv):
    kind, request = argv[1], argv[2]
    if kind not in KINDS:
        raise entry.UserError(f"{kind!r}: expected one of {', '.join(KINDS)}")
    threads = cli.start_process()["intra_op"]
    request = json.loads(request)
    if kind == "cell":
        result = throughput.measure(**request, threads=threads)
    else:
        result = races.train_and_evaluate(races.Race(**request), threads)
    print(processes.result_line(result), flush=True)
    return 0


if __name__ == "__main__":
    entry.run(main, positional="KIND REQUEST_JSON")
