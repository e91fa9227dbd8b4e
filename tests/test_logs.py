"""trainer/logs.py: what a job prints stays parseable when its processes share one stdout."""

import os
import subprocess
import sys
import time

from conftest import json_lines

LINES = 5000
ANNOUNCER = f"""
import os, pathlib, sys, time
from trainer import logs
index, folder = int(sys.argv[1]), pathlib.Path(sys.argv[2])
writer = logs.MetricWriter(None, is_chief=False, process_index=index)
(folder / f"ready{{index}}").touch()
while not (folder / "go").exists():  # both print at once, as two workers do
    time.sleep(0.001)
for line in range({LINES}):
    writer.announce("tick", line=line)
"""


def test_two_processes_on_one_pipe_print_whole_lines(tmp_path):
    # multi_node.sh --backend=tf starts its workers on the launcher's own stdout. Unbuffered
    # (as CI and many containers run Python), print() makes two writes per line.
    read, write = os.pipe()
    workers = [subprocess.Popen([sys.executable, "-c", ANNOUNCER, str(index), str(tmp_path)],
                                stdout=write, env={**os.environ, "PYTHONUNBUFFERED": "1"})
               for index in (0, 1)]
    os.close(write)
    while not all((tmp_path / f"ready{index}").exists() for index in (0, 1)):
        assert all(worker.poll() is None for worker in workers)
        time.sleep(0.01)
    (tmp_path / "go").touch()
    with os.fdopen(read) as stream:
        text = stream.read()
    assert [worker.wait() for worker in workers] == [0, 0]
    ticks = [record for record in json_lines(text) if record.get("event") == "tick"]
    for index in (0, 1):
        assert [r["line"] for r in ticks if r["process"] == index] == list(range(LINES))
