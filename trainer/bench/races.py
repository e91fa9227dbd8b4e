"""Time to accuracy, MLPerf style: how many seconds of training each contender needs to reach a
target held-out accuracy on the same records.

The baseline (the paper's network and recipe) trains for a budget of seconds; the target is the
best held-out accuracy it sustains within it, unless one is given. Each improved contender then
trains until it sustains that target, or its schedule or the budget ends. All are evaluated on
the held-out fold (subject-exclusive, center crop): the contenders every few seconds of
training, so that a fast one's time is not rounded to a coarse grid, the baseline as often as
its budget warrants (its evaluations are wall time it does not need to spend).

"Sustains" means a window of `smoothing` (3) evaluations: a race is credited with the first
evaluation whose mean with the next two is at or above the target, every race alike, the
baseline too; the last two evaluations of a curve begin no window and are never credited. A
held-out fold of a few hundred faces from a few dozen people moves by a couple of points from
one evaluation to the next; the best single evaluation of a curve that has levelled off is such
a spike, and a target set by it says more about luck than about the recipes. Crediting the
window's first evaluation, not its last, keeps the smoothing from adding two evaluations' lag
to every time, a lag that would be a large share of a fast contender's.

The clock counts training only: the steps, tracing included, and the building of the training
stream (it may read and decode the data); evaluation is excluded, so that the curve does not
depend on how often it is drawn. Each race runs in its own process (`trainer.bench.worker`).
A baseline's curve can be reused from the JSON lines of an earlier run measured with the same
settings (`reused_baseline`), so that trying changes does not run the baseline each time.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time

import tensorflow as tf

from input import schema
from launch import entry
from launch import host
from trainer import bundles
from trainer import cli
from trainer import data
from trainer import loop
from trainer import models
from trainer import recipes
from trainer.bench import charts
from trainer.bench import output
from trainer.bench import processes
from trainer.bench import timing

# The baseline creeps along its plateau; its time to half a point below the target is the
# second mark a contender is compared with.
HALF_POINT = 0.005
# What a reused baseline must share with the one it stands in for: what shapes its curve or
# its seconds. The records are compared by their manifest, wherever the folder now is.
BASELINE_SETTINGS = ("model", "recipe", "recipe_settings", "precision", "data",
                     "steps_per_call", "xla", "epochs", "records_manifest_sha256",
                     "held_out_fold", "crop_size", "budget_seconds", "eval_every_seconds",
                     "smoothing", "seed", "cache", "distribution", "machine")


@dataclasses.dataclass(frozen=True)
class Race:
    name: str  # "baseline", "improved 1", ...
    spec: str  # what was raced: a bundle's name or MODEL:RECIPE[:PRECISION]
    model: str
    recipe: str
    records: str
    crop_size: int
    budget_seconds: float
    eval_every_seconds: float
    distribution: str = "one_device"  # or mirrored:N; one process per race
    precision: str = "fp32"
    epochs: float = 0  # 0: the recipe's own length
    target: float | None = None  # stop when a window of evaluations sustains it
    smoothing: int = 3  # evaluations in a window
    held_out_fold: int = 0
    seed: int = 0
    cache: bool = False  # decoded training records kept in memory (--cache)
    data: str = "records"  # trainer.data.SOURCES
    steps_per_call: int = 1
    xla: bool = False
    recipe_settings: dict = dataclasses.field(default_factory=dict)  # recipes.resolve's


def contender(spec):
    """The Race fields of `spec`: a bundle's name (trainer.bundles) or
    MODEL:RECIPE[:PRECISION], then any :SETTING=VALUE, each a field of the race (epochs, data,
    steps_per_call) or of its recipe (learning_rate, ema_decay, batch_size, ...):
    "improved:epochs=20:ema_decay=0.999", "resnet:modern:mixed_bfloat16". ValueError naming
    what is wrong otherwise."""
    parts = spec.split(":")
    named = [part for part in parts if "=" not in part]
    if len(named) == 1 and named[0] in bundles.BUNDLES:
        bundle = bundles.BUNDLES[named[0]]
        fields = {key: getattr(bundle, key) for key in bundles.FLAG_SETTINGS}
        fields["steps_per_call"] = bundle.steps_per_call or cli.default_steps_per_call()
        fields["recipe_settings"] = dict(bundle.recipe_settings)
    elif len(named) in (2, 3) and all(named):
        fields = {"model": named[0], "recipe": named[1],
                  "precision": named[2] if len(named) == 3 else "fp32", "recipe_settings": {}}
    else:
        raise ValueError(f"a contender is a bundle ({', '.join(sorted(bundles.BUNDLES))}) or "
                         f"MODEL:RECIPE[:PRECISION] (resnet:modern:fp32), then any "
                         f":SETTING=VALUE, not {spec!r}")
    for part in parts:
        if "=" in part:
            _set(fields, spec, *part.split("=", 1))
    for kind, known in (("model", models.names()), ("recipe", sorted(recipes.RECIPES)),
                        ("precision", sorted(loop.PRECISIONS)), ("data", data.SOURCES)):
        if fields.get(kind, known[0]) not in known:
            raise ValueError(f"{spec!r}: unknown {kind} {fields[kind]!r}; expected one of "
                             f"{', '.join(known)}")
    return {"spec": spec, **fields}


# A contender's settings that are the race's own; the others belong to its recipe.
RACE_SETTINGS = {"precision": str, "data": str, "epochs": float, "steps_per_call": int,
                 "xla": bool}


def _set(fields, spec, key, text):
    """Sets the contender's setting `key` from `text`, typed as the field it sets."""
    recipe_types = {field.name: field.type for field in dataclasses.fields(recipes.Recipe)}
    kind = RACE_SETTINGS.get(key) or recipe_types.get(key)
    if kind is None or key == "name":
        known = dict.fromkeys([*RACE_SETTINGS, *recipe_types])
        known.pop("name")
        raise ValueError(f"{spec!r}: unknown setting {key!r}; expected one of "
                         f"{', '.join(known)}")
    kind = {"bool": bool, "int": int, "float": float, "str": str}.get(
        getattr(kind, "__name__", ""), float if "float" in str(kind) else kind)
    try:
        value = (text == "true" if text in ("true", "false") else None) if kind is bool \
            else kind(text)
    except ValueError:
        value = None
    if value is None:
        raise ValueError(f"{spec!r}: {key}={text!r} is not a {kind.__name__}")
    (fields if key in RACE_SETTINGS else fields["recipe_settings"])[key] = value


def check_distribution(text):
    """A race's distribution, `text`, runs in one process (one_device or mirrored:N);
    ValueError naming it otherwise."""
    if processes.Distribution.parse(text).processes != 1:
        raise ValueError(f"{text!r}: a race runs in one process (one_device or mirrored:N)")


def race_all(baseline, improved, out_dir, baseline_eval_every_seconds, target_accuracy=None,
             improved_epochs=0, baseline_from=None, baseline_seed=None, **common):
    """The baseline's race (or its curve reused from `baseline_from`) sets the target (unless
    `target_accuracy` is given), then the improved ones run to it. Prints the table and the
    ratios; writes OUT_DIR/time_to_accuracy.jsonl and its chart.

    Args:
      baseline, improved: contender specs: a bundle's name or "MODEL:RECIPE[:PRECISION]",
        then any ":SETTING=VALUE" (see `contender`).
      baseline_eval_every_seconds: the baseline's cadence (`common` has the contenders').
      improved_epochs: the contenders' length (0: each one's own).
      baseline_from: the JSON lines of an earlier run whose baseline is reused, or None.
      baseline_seed: the baseline's seed (None: the contenders').
      common: the other fields of `Race`, the same in every race.
    """
    baseline_race = Race("baseline", **contender(baseline), **{
        **common, "eval_every_seconds": baseline_eval_every_seconds,
        "seed": common["seed"] if baseline_seed is None else baseline_seed})
    window = common["smoothing"]
    with output.open_jsonl(out_dir, "time_to_accuracy.jsonl") as out:
        measured_with = {"records_manifest_sha256": manifest_sha256(common["records"]),
                         "machine": machine()}
        reused = reused_baseline(baseline_from, {**dataclasses.asdict(baseline_race),
                                                 **measured_with}) if baseline_from else None
        if reused:
            say(f"baseline: {baseline}, reused from {baseline_from} (measured "
                f"{reused.get('date', 'on an unknown date')}), not run again")
            baseline_result = {**reused, "reused_from": os.path.abspath(baseline_from)}
        else:
            say(f"baseline: {baseline} for {common['budget_seconds']:g} s of training")
            baseline_result = {**run_race(baseline_race), **measured_with, "date": now()}
        target = target_accuracy or best_sustained(baseline_result["curve"], window)
        if target is None:
            raise entry.Failure(f"the baseline was evaluated {len(baseline_result['curve'])} "
                                f"times, fewer than a window of {window}: lower "
                                f"--baseline_eval_every_seconds")
        improved_results = []
        for number, spec in enumerate(improved, 1):
            say(f"improved {number}: {spec} to {100 * target:.1f}%")
            settings = contender(spec)
            if improved_epochs:
                settings["epochs"] = improved_epochs
            improved_results.append({**run_race(Race(
                f"improved {number}", **settings, target=target, **common)), **measured_with,
                "date": now()})
        for race in (baseline_result, *improved_results):
            out.write(json.dumps({**race, "target": target,
                                  **compared(race, baseline_result, target)}) + "\n")
    chart = charts.time_to_accuracy([baseline_result, *improved_results], target,
                                    HALF_POINT, os.path.join(out_dir, "time_to_accuracy.png"))
    print(f"time to accuracy: {common['records']}, held-out fold {common['held_out_fold']}, "
          f"{common['crop_size']}x{common['crop_size']} crops, budget "
          f"{common['budget_seconds']:g} s of training, seed {common['seed']} (the baseline's "
          f"{baseline_result['seed']}); evaluated every {common['eval_every_seconds']:g} s of "
          f"training (the baseline every {baseline_result['eval_every_seconds']:g} s); a race "
          f"is credited with its first evaluation whose mean with the next {window - 1} "
          f"reaches the target")
    if reused:
        print(f"baseline reused from {baseline_from}, measured {reused.get('date', '?')}")
    for line in summary(baseline_result, improved_results, target):
        print(line)
    print(f"chart: {chart}")


def say(message):
    print(message, file=sys.stderr, flush=True)


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def manifest_sha256(records):
    """The identity of a records folder: its manifest's hash (it lists every shard's size and
    the mean image's hash). A UserError naming the file when it cannot be read."""
    path = os.path.join(records, schema.MANIFEST)
    try:
        with open(path, "rb") as manifest:
            return hashlib.sha256(manifest.read()).hexdigest()
    except OSError as error:
        raise entry.UserError(f"--records={records}: {entry.path_error(error)}") from None


def machine():
    """What a race's seconds depend on besides its settings: the processor, the cores this
    process may use and TensorFlow's version."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            processor = next((line.split(":", 1)[1].strip() for line in cpuinfo
                              if line.startswith("model name")), processor)
    except OSError:
        pass  # not Linux: the platform's own name
    return {"processor": processor, "cores": host.available_cores(),
            "tensorflow": tf.__version__}


def reused_baseline(path, settings):
    """The latest baseline race in the JSON lines at `path` measured with `settings` (a
    Race's fields with the records' manifest hash and the machine).

    Raises:
      entry.UserError: one line naming the file and, when its latest baseline was measured
        otherwise, what differs.
    """
    try:
        with open(path) as lines:
            saved = [json.loads(line) for line in lines if line.strip()]
    except OSError as error:
        raise entry.UserError(f"--baseline_from={path}: {entry.path_error(error)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise entry.UserError(f"--baseline_from={path}: not the JSON lines of "
                              f"trainer.time_to_accuracy") from None
    baselines = [race for race in saved
                 if isinstance(race, dict) and race.get("name") == "baseline"]
    if not baselines:
        raise entry.UserError(f"--baseline_from={path}: no baseline race in it")
    # A race saved before one of its fields existed was run with that field's default.
    defaults = {field.name: _default(field) for field in dataclasses.fields(Race)}
    saved_as = lambda race, key: race.get(key, defaults.get(key))  # noqa: E731
    for race in reversed(baselines):
        if all(saved_as(race, key) == settings[key] for key in BASELINE_SETTINGS):
            return race
    latest = baselines[-1]
    differs = "; ".join(f"{key} {saved_as(latest, key)!r} there, {settings[key]!r} here"
                        for key in BASELINE_SETTINGS if saved_as(latest, key) != settings[key])
    raise entry.UserError(f"--baseline_from={path}: its baseline was measured with other "
                          f"settings ({differs}): run the baseline again without "
                          f"--baseline_from")


def _default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


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
            say(f"  {point['race']}: {point['seconds']:7.1f} s, step {point['step']:>6}: "
                f"held-out exact {point['accuracy']:.3f}, 1-off {point['accuracy_1off']:.3f}")
        else:
            result = processes.read_result(line) or result
    process.wait()
    drain.join()
    if result is None or process.returncode:
        last = next((line.strip() for line in reversed(errors) if line.strip()), "no output")
        raise entry.Failure(f"the {race.name} race ({race.spec}) failed: {last}")
    return result


def train_and_evaluate(race, threads=None):
    """Runs in the race's process: the real job and step, evaluated on the clock's marks.
    Returns {"curve": [{"seconds", "step", "accuracy", "accuracy_1off", "sustained"}],
    "stopped", ...}."""
    from trainer import evaluation
    from trainer import strategy

    distribution = processes.Distribution.parse(race.distribution)
    backend = strategy.create(distribution.strategy, logical_cpus=distribution.logical_cpus)
    recipe = recipes.resolve(race.recipe, **race.recipe_settings)
    config = loop.TrainConfig(
        # The recipe's batch as one job, whatever the race's replicas: races compare recipes.
        model_dir="", records=race.records, recipe=recipe, global_batch_size=recipe.batch_size,
        model=race.model, data=race.data, held_out_fold=race.held_out_fold, epochs=race.epochs,
        crop_size=race.crop_size, precision=race.precision, seed=race.seed, cache=race.cache,
        input_threads=threads, steps_per_call=race.steps_per_call, xla=race.xla)
    job = loop.prepare(config, backend)
    held_out = evaluation.evaluator(backend, job.info, job.model,
                                    job.plan["global_batch_size"], 1, race.crop_size, threads)
    started = time.perf_counter()
    timer = timing.StepTimer(job)  # on the clock: building the stream may read the data
    seconds = time.perf_counter() - started
    total = job.plan["total_steps"]
    curve, next_eval, stopped = [], race.eval_every_seconds, "schedule"
    step = 0
    while step < total:
        length = min(race.steps_per_call, total - step)
        seconds += timer.window(length)  # the clock runs while the race trains, not evaluates
        step += length
        out_of_time = seconds >= race.budget_seconds
        if seconds >= next_eval or out_of_time or step == total:
            with recipes.averaged_weights(job.optimizer, job.model.trainable_variables):
                evaluated = held_out()
            curve.append({"seconds": seconds, "step": step, "accuracy": evaluated["accuracy"],
                          "accuracy_1off": evaluated["accuracy_1off"]})
            print(json.dumps({"race": race.name, **curve[-1]}), flush=True)
            next_eval = seconds + race.eval_every_seconds
            if (race.target is not None
                    and time_to(curve, race.target, race.smoothing) is not None):
                stopped = "target"
                break
            if out_of_time:
                stopped = "budget"
                break
    for point, mean in zip(curve, window_means(curve, race.smoothing)):
        point["sustained"] = mean
    return {**dataclasses.asdict(race), "curve": curve, "stopped": stopped,
            "total_steps": total, "global_batch_size": job.plan["global_batch_size"],
            "images_per_sec": curve[-1]["step"] * job.plan["global_batch_size"] / seconds}


def window_means(curve, window, key="accuracy"):
    """Per evaluation of `curve`, the mean `key` of it and the next `window` - 1 evaluations;
    None for the last `window` - 1, which begin no full window."""
    values = [point[key] for point in curve]
    return [sum(values[index:index + window]) / window
            if index + window <= len(values) else None for index in range(len(values))]


def best_sustained(curve, window):
    """The best mean exact accuracy of `window` consecutive evaluations (None: too few)."""
    return max((mean for mean in window_means(curve, window) if mean is not None), default=None)


def time_to(curve, target, window):
    """Training seconds of the first evaluation whose window (it and the next `window` - 1)
    averages at least `target`; None if there is none."""
    return next((point["seconds"] for point, mean in zip(curve, window_means(curve, window))
                 if mean is not None and mean >= target), None)


def compared(race, baseline, target):
    """The race's time to `target` and, for a contender, how many times sooner than the
    baseline it is: against the baseline's time to the target and to half a point below."""
    window = baseline["smoothing"]
    seconds = time_to(race["curve"], target, window)
    to_target = time_to(baseline["curve"], target, window)
    below = time_to(baseline["curve"], target - HALF_POINT, window)
    if race is baseline:
        return {"seconds_to_target": seconds, "seconds_to_half_point_below": below}
    return {"seconds_to_target": seconds,
            "sooner": None if seconds is None or to_target is None else to_target / seconds,
            "sooner_than_half_point_below": None if seconds is None or below is None
            else below / seconds}


def summary(baseline, improved, target):
    """The table and, for each improved race, its time to the target against the baseline's,
    as lines of text. "exact" and "1-off" are the race's best window's means."""
    window = baseline["smoothing"]
    lines = [f"{'race':<10} {'model':<14} {'recipe':<7} {'precision':<15} {'steps':>6} "
             f"{'train s':>8} {'images/s':>8} {'evals':>5} {'exact':>6} {'1-off':>6} "
             f"{'to target':>9}  stopped by"]
    for race in [baseline, *improved]:
        curve = race["curve"]
        means = list(zip(window_means(curve, window), window_means(curve, window,
                                                                   "accuracy_1off")))
        exact, one_off = max((pair for pair in means if pair[0] is not None),
                             default=(None, None))
        reached = time_to(curve, target, window)
        lines.append(
            f"{race['name']:<10} {race['model']:<14} {race['recipe']:<7} "
            f"{race['precision']:<15} {curve[-1]['step']:>6} {curve[-1]['seconds']:>8.1f} "
            f"{race['images_per_sec']:>8.1f} {len(curve):>5} {_percent(exact):>6} "
            f"{_percent(one_off):>6} {'never' if reached is None else f'{reached:.1f} s':>9}"
            f"  {race['stopped']}")
    return lines + [_ratio_line(race, baseline, target) for race in improved]


def _percent(accuracy):
    return "-" if accuracy is None else f"{100 * accuracy:.1f}%"


def _ratio_line(race, baseline, target):
    race = {**race, "name": f"{race['name']} ({race.get('spec', race['model'])})"}
    times = compared(race, baseline, target)
    ended = race["curve"][-1]["seconds"]
    if times["seconds_to_target"] is None:
        return (f"{race['name']}: never sustained {100 * target:.1f}% (stopped by its "
                f"{race['stopped']} after {ended:.1f} s of training)")
    to_target = compared(baseline, baseline, target)
    if times["sooner"] is None:
        return (f"{race['name']}: sustained {100 * target:.1f}% after "
                f"{times['seconds_to_target']:.1f} s; the baseline never did")
    line = (f"{race['name']}: sustained {100 * target:.1f}% held-out exact accuracy "
            f"{times['sooner']:.1f}x sooner than the baseline "
            f"({times['seconds_to_target']:.1f} s vs {to_target['seconds_to_target']:.1f} s)")
    if times["sooner_than_half_point_below"] is not None:
        line += (f"; {times['sooner_than_half_point_below']:.1f}x against the baseline's "
                 f"{to_target['seconds_to_half_point_below']:.1f} s to "
                 f"{100 * (target - HALF_POINT):.1f}%")
    return line
