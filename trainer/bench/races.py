"""Time to accuracy, MLPerf style: how many seconds of training each contender needs to reach a
target held-out accuracy on the same records.

The baseline (the paper's network and recipe) trains for a budget of seconds; the target is the
best held-out accuracy it reaches within it, unless one is given. Each improved contender then
trains until it reaches that target, or its schedule or the budget ends. All are evaluated on
the held-out fold (subject-exclusive, center crop) every `eval_every_seconds` of training.

"Reaches" means sustains: the accuracy compared is the mean of the last `smoothing`
evaluations. A held-out fold of a few hundred faces from a few dozen people moves by a couple of
points from one evaluation to the next; the best single evaluation of a curve that has levelled
off is such a spike, and a target set by it says more about luck than about the recipes.

The clock counts training steps only, tracing included; evaluation is excluded, so that the
curve does not depend on how often it is drawn. Each race runs in its own process
(`trainer.bench.worker`).
"""

import dataclasses
import json
import os
import subprocess
import sys
import threading

from launch import entry
from trainer import loop
from trainer import models
from trainer import recipes
from trainer.bench import charts
from trainer.bench import output
from trainer.bench import processes
from trainer.bench import timing


@dataclasses.dataclass(frozen=True)
class Race:
    name: str  # "baseline", "improved 1", ...
    model: str
    recipe: str
    records: str
    crop_size: int
    budget_seconds: float
    eval_every_seconds: float
    distribution: str = "one_device"  # or mirrored:N; one process per race
    precision: str = "fp32"
    epochs: float = 0  # 0: the recipe's own length
    target: float | None = None  # stop when the (smoothed) held-out accuracy reaches it
    smoothing: int = 3  # evaluations averaged
    held_out_fold: int = 0
    seed: int = 0
    cache: bool = False  # decoded training records kept in memory (--cache)


def contender(spec):
    """{"model", "recipe", "precision"} from "resnet:modern[:mixed_bfloat16]", with a clear
    error otherwise."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"a contender is MODEL:RECIPE[:PRECISION] (resnet:modern:fp32), "
                         f"not {spec!r}")
    named = {"model": parts[0], "recipe": parts[1],
             "precision": parts[2] if len(parts) == 3 else "fp32"}
    for kind, known in (("model", models.names()), ("recipe", sorted(recipes.RECIPES)),
                        ("precision", sorted(loop.PRECISIONS))):
        if named[kind] not in known:
            raise ValueError(f"{spec!r}: unknown {kind} {named[kind]!r}; expected one of "
                             f"{', '.join(known)}")
    return named


def check_distribution(text):
    """A race's distribution, `text`, runs in one process (one_device or mirrored:N);
    ValueError naming it otherwise."""
    if processes.Distribution.parse(text).processes != 1:
        raise ValueError(f"{text!r}: a race runs in one process (one_device or mirrored:N)")


def race_all(baseline, improved, out_dir, target_accuracy=None, improved_epochs=0, **common):
    """The baseline's race sets the target (unless `target_accuracy` is given), then the
    improved ones run to it. Prints the table and the ratios; writes
    OUT_DIR/time_to_accuracy.jsonl and its chart.

    Args:
      baseline, improved: contender specs, "MODEL:RECIPE[:PRECISION]" (see `contender`).
      improved_epochs: the improved recipe's length (0: the recipe's own).
      common: the other fields of `Race`, the same in every race.
    """
    with output.open_jsonl(out_dir, "time_to_accuracy.jsonl") as out:
        print(f"baseline: {baseline} for {common['budget_seconds']:g} s of training",
              file=sys.stderr, flush=True)
        baseline_result = run_race(Race("baseline", **contender(baseline), **common))
        target = target_accuracy or max(p["smoothed"] for p in baseline_result["curve"])
        improved_results = []
        for number, spec in enumerate(improved, 1):
            print(f"improved {number}: {spec} to {100 * target:.1f}%", file=sys.stderr,
                  flush=True)
            improved_results.append(run_race(Race(
                f"improved {number}", **contender(spec), epochs=improved_epochs,
                target=target, **common)))
        for race in (baseline_result, *improved_results):
            out.write(json.dumps({**race, "target": target}) + "\n")
    chart = charts.time_to_accuracy([baseline_result, *improved_results], target,
                                    os.path.join(out_dir, "time_to_accuracy.png"))
    print(f"time to accuracy: {common['records']}, held-out fold 0, {common['crop_size']}x"
          f"{common['crop_size']} crops, budget {common['budget_seconds']:g} s of training, "
          f"seed {common['seed']}")
    for line in summary(baseline_result, improved_results, target):
        print(line)
    print(f"chart: {chart}")


def run_race(race):
    """Runs `race` in a new process; returns its result, or raises entry.Failure with the last
    line of its error output."""
    command = processes.worker_command("race", dataclasses.asdict(race), race.distribution)
    # Each evaluation is shown as it comes: a race can last many minutes.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    errors = []
    drain = threading.Thread(target=lambda: errors.extend(process.stderr))
    drain.start()
    result = None
    for line in process.stdout:
        if line.startswith('{"race"'):
            point = json.loads(line)
            print(f"  {point['race']}: {point['seconds']:7.1f} s, step {point['step']:>6}: "
                  f"held-out exact {point['accuracy']:.3f} (smoothed {point['smoothed']:.3f}), "
                  f"1-off {point['accuracy_1off']:.3f}",
                  file=sys.stderr, flush=True)
        else:
            result = processes.read_result(line) or result
    process.wait()
    drain.join()
    if result is None or process.returncode:
        last = next((line.strip() for line in reversed(errors) if line.strip()), "no output")
        raise entry.Failure(f"the {race.name} race ({race.model}:{race.recipe}) failed: {last}")
    return result


def train_and_evaluate(race, threads=None):
    """Runs in the race's process: the real job and step, evaluated on the clock's marks.
    Returns {"curve": [{"seconds", "step", "accuracy", "accuracy_1off", "smoothed"}],
    "stopped", ...}."""
    from trainer import evaluation
    from trainer import strategy

    distribution = processes.Distribution.parse(race.distribution)
    backend = strategy.create(distribution.strategy, logical_cpus=distribution.logical_cpus)
    recipe = recipes.resolve(race.recipe)
    config = loop.TrainConfig(
        # The recipe's batch as one job, whatever the race's replicas: races compare recipes.
        model_dir="", records=race.records, recipe=recipe, global_batch_size=recipe.batch_size,
        model=race.model, held_out_fold=race.held_out_fold, epochs=race.epochs,
        crop_size=race.crop_size, precision=race.precision, seed=race.seed, cache=race.cache,
        input_threads=threads)
    job = loop.prepare(config, backend)
    timer = timing.StepTimer(job)
    held_out = evaluation.evaluator(backend, job.info, job.model,
                                    job.plan["global_batch_size"], 1, race.crop_size, threads)
    total = job.plan["total_steps"]
    curve, seconds, next_eval, stopped = [], 0.0, race.eval_every_seconds, "schedule"
    for step in range(1, total + 1):
        seconds += timer.window(1)  # the clock runs while the race trains, not evaluates
        out_of_time = seconds >= race.budget_seconds
        if seconds >= next_eval or out_of_time or step == total:
            evaluated = held_out()
            curve.append({"seconds": seconds, "step": step, "accuracy": evaluated["accuracy"],
                          "accuracy_1off": evaluated["accuracy_1off"]})
            curve[-1]["smoothed"] = smoothed(curve, race.smoothing)
            print(json.dumps({"race": race.name, **curve[-1]}), flush=True)
            next_eval = seconds + race.eval_every_seconds
            if race.target is not None and curve[-1]["smoothed"] >= race.target:
                stopped = "target"
                break
            if out_of_time:
                stopped = "budget"
                break
    return {**dataclasses.asdict(race), "curve": curve, "stopped": stopped,
            "total_steps": total, "global_batch_size": job.plan["global_batch_size"],
            "images_per_sec": curve[-1]["step"] * job.plan["global_batch_size"] / seconds}


def smoothed(curve, evaluations):
    """The mean exact accuracy of the curve's last `evaluations` points (fewer at its start)."""
    window = curve[-evaluations:]
    return sum(point["accuracy"] for point in window) / len(window)


def time_to(curve, target):
    """Training seconds of the first evaluation whose smoothed accuracy is at or above
    `target` (None if never)."""
    return next((point["seconds"] for point in curve if point["smoothed"] >= target), None)


def summary(baseline, improved, target):
    """The table and, for each improved race, its time to the target against the baseline's,
    as lines of text. "exact" is the race's best smoothed accuracy, "1-off" the 1-off of that
    evaluation."""
    lines = [f"{'race':<10} {'model':<14} {'recipe':<7} {'precision':<15} {'steps':>6} "
             f"{'train s':>8} {'images/s':>8} {'exact':>6} {'1-off':>6} {'to target':>9}  "
             f"stopped by"]
    for race in [baseline, *improved]:
        best = max(race["curve"], key=lambda point: point["smoothed"])
        reached = time_to(race["curve"], target)
        lines.append(
            f"{race['name']:<10} {race['model']:<14} {race['recipe']:<7} "
            f"{race['precision']:<15} {race['curve'][-1]['step']:>6} "
            f"{race['curve'][-1]['seconds']:>8.1f} {race['images_per_sec']:>8.1f} "
            f"{100 * best['smoothed']:>5.1f}% {100 * best['accuracy_1off']:>5.1f}% "
            f"{'never' if reached is None else f'{reached:.1f} s':>9}  {race['stopped']}")
    baseline_time = time_to(baseline["curve"], target)
    for race in improved:
        improved_time = time_to(race["curve"], target)
        if improved_time is None:
            ended = race["curve"][-1]["seconds"]
            lines.append(f"{race['name']}: never reached {100 * target:.1f}% (stopped by its "
                         f"{race['stopped']} after {ended:.1f} s of training)")
        else:
            lines.append(f"{race['name']}: {100 * target:.1f}% held-out exact accuracy "
                         f"{baseline_time / improved_time:.1f}x sooner than the baseline "
                         f"({improved_time:.1f} s vs {baseline_time:.1f} s; goal >= 3x)")
    return lines
