"""The benchmarks' PNG charts: throughput per cell, accuracy against training seconds, and
accuracy against global batch."""

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
from matplotlib import pyplot  # noqa: E402  (after the backend is chosen)
from matplotlib import ticker  # noqa: E402

from trainer import bundles  # noqa: E402

SHORT_PRECISION = {"fp32": "fp32", "mixed_float16": "fp16", "mixed_bfloat16": "bf16"}


def throughput(results, path):
    """A bar per measured cell (images/s, min to max as the error bar); failed cells are left
    out. Returns `path`."""
    measured = [r for r in results if "error" not in r]
    labels = [f"{r['model']} b{r['global_batch_size']} {SHORT_PRECISION.get(r['precision'])}"
              f"{' xla' if r['xla'] else ''} {r['data']} {r['distribution']}"
              f"{_calls_and_gradients(r)}" for r in measured]
    rates = [r["images_per_sec"] for r in measured]
    spread = [[r["images_per_sec"] - r["min"] for r in measured],
              [r["max"] - r["images_per_sec"] for r in measured]]
    figure, axes = pyplot.subplots(figsize=(9, 1.2 + 0.45 * len(measured)))
    rows = range(len(measured))[::-1]  # the first cell on top, as in the table
    bars = axes.barh(rows, rates, xerr=spread, capsize=3, color="#4c72b0")
    axes.bar_label(bars, labels=[f"{rate:,.0f}" for rate in rates], padding=4)
    axes.set_yticks(rows, labels, fontsize=8)
    axes.set_xlabel("training images/s (median of the loop's logged windows; min to max)")
    axes.set_xlim(0, 1.15 * max([r["max"] for r in measured], default=1))
    axes.set_title("Training throughput")
    return _save(figure, path)


def _calls_and_gradients(cell):
    """A throughput cell's steps per call and gradient compression, when not the usual ones
    (gpu_check's cells have neither)."""
    calls = cell.get("steps_per_call", 1)
    compression = cell.get("gradient_compression", "none")
    return (f" {calls}/call" if calls != 1 else "") + (
        f" {compression} grads" if compression != "none" else "")


def _contender(race):
    """What raced: its spec (trainer.bench.races.contender) and, for a bundle, its network."""
    network = (f"{race['model']}, {race['recipe']} recipe, "
               f"{SHORT_PRECISION.get(race['precision'], race['precision'])}")
    spec = race.get("spec")  # not in races saved before specs
    if not spec:
        return network
    return f"{spec} ({network})" if spec.split(":")[0] in bundles.BUNDLES else spec


def time_to_accuracy(races, target, half_point, path):
    """Held-out accuracy against training seconds (a log axis: equal gaps are equal ratios):
    per race, each evaluation as a faint dot and, as a line, each evaluation's window (its mean
    with the next ones, what is compared with the target), the credited evaluation circled; the
    target and half a point below it as dashed lines. Returns `path`."""
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    for race in races:
        seconds = [point["seconds"] for point in race["curve"]]
        windows = [(point["seconds"], 100 * point["sustained"]) for point in race["curve"]
                   if point["sustained"] is not None]
        line, = axes.plot(*zip(*windows) if windows else ([], []),
                          label=f"{race['name']}: {_contender(race)}")
        axes.plot(seconds, [100 * point["accuracy"] for point in race["curve"]], ".",
                  color=line.get_color(), alpha=0.35, markersize=4)
        credited = next((window for window in windows if window[1] >= 100 * target), None)
        if credited:
            axes.plot(*credited, "o", color=line.get_color(), fillstyle="none", markersize=9)
    axes.axhline(100 * target, color="gray", linestyle="--",
                 label=f"target {100 * target:.1f}%")
    axes.axhline(100 * (target - half_point), color="gray", linestyle=":",
                 label=f"half a point below, {100 * (target - half_point):.1f}%")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda seconds, _: f"{seconds:g}"))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("training seconds (log scale; evaluation excluded)")
    axes.set_ylabel("held-out exact accuracy (%)")
    axes.set_title("Time to accuracy: dots each evaluation, lines its window's mean")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def batch_scaling(results, path):
    """Held-out exact and 1-off accuracy against global batch (log2 axis), each point marked
    with its steps per epoch; the smallest batch's exact accuracy as a dashed line, always
    answering the largest class as a dotted one. Returns `path`."""
    first = results[0]
    batches = [result["global_batch_size"] for result in results]
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    for key, label in (("accuracy", "exact"), ("accuracy_1off", "1-off")):
        axes.plot(batches, [100 * result[key] for result in results], "o-",
                  label=f"held-out {label}")
    for result in results:
        axes.annotate(f"{result['steps_per_epoch']} steps/epoch",
                      (result["global_batch_size"], 100 * result["accuracy"]),
                      textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
    axes.axhline(100 * first["accuracy"], color="gray", linestyle="--",
                 label=f"exact at batch {first['global_batch_size']}")
    axes.axhline(100 * first["largest_class_share"], color="gray", linestyle=":",
                 label="exact, always the largest class")
    axes.set_xscale("log", base=2)
    axes.set_xticks(batches, [str(batch) for batch in batches])
    axes.set_xlabel(f"global batch ({first['replicas']} replicas; learning rate scaled "
                    f"linearly, with warm-up)")
    axes.set_ylabel("held-out accuracy (%), center crop")
    axes.set_ylim(0, 100)  # the whole scale: a fall of a few points looks like one
    epochs = f"{first['epochs']:g} epoch(s)" if first["epochs"] else "the recipe's epochs"
    axes.set_title(f"Accuracy against global batch: {first['model']}, {first['recipe']} "
                   f"recipe, {epochs}, seed {first['seed']}")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return _save(figure, path)


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
