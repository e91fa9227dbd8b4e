"""The one metric writer: JSON lines (stdout and MODEL_DIR/metrics.jsonl) and TensorBoard.

Only the chief writes metrics; every process may `announce` a line about itself (its rank,
host and devices at start, its stop step), so that a job's log shows what each process did.
Keys are stable and prefixed by where they come from: "train/loss", "eval/accuracy_1off".
"""

import json
import os
import sys
import time

import tensorflow as tf

METRICS_FILE = "metrics.jsonl"
TENSORBOARD = "tensorboard"


class MetricWriter:

    def __init__(self, model_dir, is_chief, process_index):
        self._is_chief = is_chief
        self._process_index = process_index
        self._file = None
        self._summaries = {}
        if is_chief:
            os.makedirs(model_dir, exist_ok=True)
            self._file = open(os.path.join(model_dir, METRICS_FILE), "a")
            self._tensorboard = os.path.join(model_dir, TENSORBOARD)

    def announce(self, event, **fields):
        """A line from any process (not a metric): {"event", "process", ...}."""
        say(json.dumps({"event": event, "process": self._process_index, "time": time.time(),
                        **fields}))

    def write(self, step, values):
        """One record of metrics at `step` from the chief: scalars go to TensorBoard too.

        Args:
          values: {"train/loss": 1.2, "eval/confusion": [[...]], ...}; each key's first part
            names its TensorBoard run (train, eval).
        """
        if not self._is_chief:
            return
        line = json.dumps({"step": int(step), "time": time.time(), **values})
        say(line)
        self._file.write(line + "\n")
        self._file.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                run, _, name = key.partition("/")
                with self._summary_writer(run).as_default():
                    tf.summary.scalar(name or run, value, step=int(step))

    def text(self, step, key, text):
        """A block of text to TensorBoard (a confusion matrix), from the chief."""
        if self._is_chief:
            run, _, name = key.partition("/")
            with self._summary_writer(run).as_default():
                tf.summary.text(name, f"```\n{text}\n```", step=int(step))

    def close(self):
        for writer in self._summaries.values():
            writer.flush()
        if self._file:
            self._file.close()

    def _summary_writer(self, run):
        if run not in self._summaries:
            self._summaries[run] = tf.summary.create_file_writer(
                os.path.join(self._tensorboard, run))
        return self._summaries[run]


def say(text):
    """Prints `text` as one line in one write. The workers of `multi_node.sh --backend=tf` share
    one stdout pipe, and print() writes the line and its newline separately: two workers printing
    at once would run their lines together into one that parses as neither."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
