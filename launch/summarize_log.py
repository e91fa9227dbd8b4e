"""Reads a training job's output (stdin) and prints it for people: the start line of rank 0,
then one line per logged step and per evaluation. Used by the demo; the JSON stays in
MODEL_DIR/metrics.jsonl for machines.

  horovodrun -np 2 python -m trainer.main ... | python launch/summarize_log.py
"""

import json
import re
import sys

RANK_PREFIX = re.compile(r"^\[(\d+)\]<std(?:out|err)>:")


def describe(record):
    step = record.get("step")
    if "train/loss" in record:
        rate = record.get("train/images_per_sec")
        speed = f", {rate:,.0f} images/s" if rate else ""
        return (f"step {step:>5}  loss {record['train/loss']:.3f}  train accuracy "
                f"{record['train/accuracy']:.3f}  learning rate "
                f"{record['train/learning_rate']:.4f}{speed}")
    if "eval/accuracy" in record:
        return (f"step {step:>5}  held-out: exact {record['eval/accuracy']:.3f}, 1-off "
                f"{record['eval/accuracy_1off']:.3f} ({record['eval/examples']} examples)")
    if record.get("event") in ("finished", "stopped", "restored", "warning", "non_finite_loss"):
        details = {k: v for k, v in record.items() if k not in ("event", "time")}
        return f"{record['event']}: {details}"
    return None


def main():
    for line in sys.stdin:
        match = RANK_PREFIX.match(line)
        if match and match.group(1) != "0":
            continue  # every rank logs its start and end; rank 0 speaks for the job
        text = line[match.end():] if match else line
        if text.startswith("{"):
            try:
                summary = describe(json.loads(text))
            except json.JSONDecodeError:
                summary = text.rstrip()
            if summary:
                print(summary, flush=True)
        else:
            print(text.rstrip(), flush=True)


if __name__ == "__main__":
    main()
