"""Held-out accuracy against global batch: where a recipe's linearly scaled learning rate
stops reaching the accuracy of a small batch.

The same job trains at each global batch, the smallest first: the same records, model,
recipe, epochs and seed, in a fresh model folder each; only `--batch_size` differs, so the
steps, warm-up and peak rate are the ones `trainer.loop.plan_job` derives for a user's job at
that batch. Each runs as the user's own command, `python -m trainer.main`, in processes of its
own (under horovodrun for horovod:N): what is measured is the trainer itself, synchronized
batch norm, warnings and all, not a copy of its loop. The held-out fold is evaluated once, at
the end, on the center crop.

Training seconds are the trainer's own timed steps (its metrics.jsonl; the first step, which
traces, and the evaluation are left out).
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from launch import entry
from trainer import checkpoint as checkpoint_lib
from trainer import logs
from trainer.bench import charts
from trainer.bench import output
from trainer.bench import processes

HELD_OUT_FOLD = 0
# trainer.main evaluates at every multiple of --eval_every and at the last step: a period no
# job reaches leaves the last step only.
EVALUATE_AT_THE_END_ONLY = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Job:
    """What every batch of a sweep shares."""
    records: str
    model: str
    recipe: str
    crop_size: int
    epochs: float  # 0: the recipe's own length
    distribution: str  # one_device, mirrored:N or horovod:N
    seed: int = 0
    cache: bool = False


def check_batch_sizes(batch_sizes, distribution):
    """ValueError naming the first global batch that does not split into equal per-replica
    batches over `distribution`'s replicas (trainer.main would refuse it after the others ran)."""
    replicas = processes.Distribution.parse(distribution).count
    for batch in batch_sizes:
        if batch < 1 or batch % replicas:
            raise ValueError(f"--batch_sizes: {batch} does not split over the {replicas} "
                             f"replicas of {distribution} (a multiple of {replicas})")


def sweep(job, batch_sizes, out_dir):
    """Trains `job` at each global batch of `batch_sizes`, smallest first; prints the table
    and writes OUT_DIR/batch_scaling.jsonl (a line per batch, as each ends) and the chart.

    Raises:
      entry.Failure: naming the batch whose run failed (the lines of those before are kept).
    """
    with output.open_jsonl(out_dir, "batch_scaling.jsonl") as out:
        models_dir = os.path.join(out_dir, "models")
        os.makedirs(models_dir, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=models_dir)
        results = []
        for batch in sorted(set(batch_sizes)):
            print(f"global batch {batch}: training ({job.model}, {job.recipe} recipe, "
                  f"{job.distribution})", file=sys.stderr, flush=True)
            result = train_at(job, batch, os.path.join(folder, f"batch_{batch}"))
            results.append(against_smallest(result, results[0] if results else result))
            print(f"global batch {batch}: held-out exact {result['accuracy']:.3f}, 1-off "
                  f"{result['accuracy_1off']:.3f} after {result['train_seconds']:.0f} s",
                  file=sys.stderr, flush=True)
            out.write(json.dumps(results[-1]) + "\n")
            out.flush()
    chart = charts.batch_scaling(results, os.path.join(out_dir, "batch_scaling.png"))
    for line in table(results):
        print(line)
    print(f"chart: {chart}; model folders: {folder}")
    return results


def train_command(job, batch, model_dir):
    """`python -m trainer.main ...` of `job` at global batch `batch`, in its distribution's
    processes."""
    distribution = processes.Distribution.parse(job.distribution)
    args = [sys.executable, "-m", "trainer.main", f"--records={job.records}",
            f"--model_dir={model_dir}", f"--model={job.model}", f"--recipe={job.recipe}",
            f"--crop_size={job.crop_size}", f"--batch_size={batch}", f"--seed={job.seed}",
            f"--held_out_fold={HELD_OUT_FOLD}", f"--epochs={job.epochs:g}",
            f"--eval_every={EVALUATE_AT_THE_END_ONLY}", "--checkpoint_every=0",
            f"--strategy={distribution.strategy}",
            f"--logical_cpus={distribution.logical_cpus}",
            "--cache" if job.cache else "--nocache"]
    return distribution.command(args)


def train_at(job, batch, model_dir):
    """Runs the job at global batch `batch` in `model_dir`; returns its result (`result_of`),
    with the trainer's warning if it gave one. The trainer's warnings are shown as they come."""
    process = subprocess.Popen(train_command(job, batch, model_dir), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    errors = []
    drain = threading.Thread(target=lambda: errors.extend(process.stderr))
    drain.start()
    warnings = []
    for line in process.stdout:
        event = _event(line)
        if event.get("event") == "warning" and event["message"] not in warnings:
            warnings.append(event["message"])
            print(f"  warning: {event['message']}", file=sys.stderr, flush=True)
    process.wait()
    drain.join()
    if process.returncode:
        said = [line.strip() for line in errors if "error:" in line] or \
               [line.strip() for line in errors if line.strip()] or ["no output"]
        raise entry.Failure(f"the run at global batch {batch} failed (exit code "
                            f"{process.returncode}; its folder {model_dir}): {said[-1]}")
    return {**dataclasses.asdict(job), **result_of(model_dir),
            "warning": warnings[0] if warnings else None}


def _event(line):
    """The trainer's JSON line in `line` (horovodrun puts the rank's tag before it), or {}."""
    start = line.find("{")
    try:
        return json.loads(line[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


def result_of(model_dir):
    """What a finished job's folder says: its derived values (run.json), its last held-out
    evaluation and its training seconds (metrics.jsonl)."""
    run = checkpoint_lib.read_run(model_dir)
    with open(os.path.join(model_dir, logs.METRICS_FILE)) as f:
        records = [json.loads(line) for line in f]
    evaluated = [record for record in records if "eval/accuracy" in record][-1]
    seconds, steps = training_seconds(records)
    return {"model_dir": model_dir,
            **{key: run[key] for key in (
                "global_batch_size", "per_replica_batch_size", "replicas", "steps_per_epoch",
                "total_steps", "warmup_steps", "learning_rate", "train_examples",
                "eval_examples")},
            "accuracy": evaluated["eval/accuracy"],
            "accuracy_1off": evaluated["eval/accuracy_1off"],
            "largest_class_share": largest_class_share(evaluated["eval/confusion"]),
            "train_seconds": seconds,
            "images_per_sec": steps * run["global_batch_size"] / seconds if seconds else None}


def largest_class_share(confusion):
    """The exact accuracy of always answering the held-out split's largest class: the floor
    a network that learned nothing of the faces reaches (rows of `confusion` are true classes)."""
    counts = [sum(row) for row in confusion]
    return max(counts) / sum(counts)


def training_seconds(records):
    """(seconds, steps) of the timed training steps in a job's metric records. Each logged
    window gives its mean seconds per timed step; the job's first step (tracing) is untimed."""
    seconds, timed_steps, previous = 0.0, 0, 0
    for record in records:
        if "train/loss" not in record:
            continue
        steps = record["step"] - previous - (previous == 0)
        seconds += record.get("train/step_seconds", 0.0) * steps
        timed_steps += steps
        previous = record["step"]
    return seconds, timed_steps


def against_smallest(result, smallest):
    """`result` with its accuracies against the smallest batch's: a difference (in points of
    accuracy, 0-1 scale) and a ratio."""
    compared = dict(result, smallest_global_batch_size=smallest["global_batch_size"])
    for key in ("accuracy", "accuracy_1off"):
        compared[f"{key}_minus_smallest"] = result[key] - smallest[key]
        compared[f"{key}_ratio_to_smallest"] = (result[key] / smallest[key] if smallest[key]
                                                else None)
    return compared


def table(results):
    """The sweep as lines of text; "*" marks the batches the trainer warned about (too few
    steps per epoch)."""
    first = results[0]
    lines = [f"batch scaling: {first['records']}, held-out fold {HELD_OUT_FOLD} (center crop), "
             f"{first['crop_size']}x{first['crop_size']} crops, {first['model']}, "
             f"{first['recipe']} recipe, {first['distribution']} ({first['replicas']} "
             f"replicas), seed {first['seed']}, "
             + (f"{first['epochs']:g} epoch(s)" if first["epochs"] else "the recipe's epochs")
             + f"; always the largest class: {100 * first['largest_class_share']:.1f}% exact",
             f"{'global':>6} {'replica':>7} {'steps/ep':>8} {'steps':>6} {'warm-up':>7} "
             f"{'peak lr':>8} {'exact':>6} {'1-off':>6} {'train s':>8} {'images/s':>8}  "
             f"exact vs {first['global_batch_size']}   1-off vs {first['global_batch_size']}"]
    for result in results:
        warned = "*" if result["warning"] else " "
        lines.append(
            f"{result['global_batch_size']:>6} {result['per_replica_batch_size']:>7} "
            f"{result['steps_per_epoch']:>7}{warned} {result['total_steps']:>6} "
            f"{result['warmup_steps']:>7} {result['learning_rate']:>8.4g} "
            f"{100 * result['accuracy']:>5.1f}% {100 * result['accuracy_1off']:>5.1f}% "
            f"{result['train_seconds']:>8.1f} {result['images_per_sec'] or 0:>8.1f}  "
            f"{_compared(result, 'accuracy')}   {_compared(result, 'accuracy_1off')}")
    if any(result["warning"] for result in results):
        lines.append("* trainer.main warned: too few steps per epoch for the scaled rate")
    return lines


def _compared(result, key):
    ratio = result[f"{key}_ratio_to_smallest"]
    return (f"{100 * result[f'{key}_minus_smallest']:+5.1f} pt "
            + (f"{ratio:.2f}x" if ratio is not None else "  n/a"))
