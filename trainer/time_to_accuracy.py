"""Time to accuracy, MLPerf style: seconds of training to a held-out accuracy (trainer.bench).

  python -m trainer.time_to_accuracy --records=runs/big/records_64 --crop_size=56 \\
      --budget_seconds=1200 --cache --improved=improved,resnet:modern --out_dir=runs/big/tta
  # Another contender against the same baseline, without running it again:
  python -m trainer.time_to_accuracy --records=runs/big/records_64 --crop_size=56 \\
      --budget_seconds=1200 --cache --improved_epochs=20 \\
      --baseline_from=runs/big/tta/time_to_accuracy.jsonl \\
      --improved=improved --out_dir=runs/big/tta_20_epochs

The baseline (--baseline, the paper's network and recipe by default) trains for
--budget_seconds of training, evaluated every --baseline_eval_every_seconds; the target is the
best held-out accuracy it sustains within them (the mean of a window of --smoothing consecutive
evaluations). Each --improved contender (a bundle, or MODEL:RECIPE[:PRECISION], then any
:SETTING=VALUE: "improved:epochs=20:learning_rate=0.2") then trains, evaluated every
--eval_every_seconds, until it sustains that target, or its schedule or the budget ends. Every race is credited with the
first evaluation whose window (it and the next ones) averages at least the target. Each race
runs in its own process. Out: a table, each contender's time against the baseline's time to the
target and to half a point below, OUT_DIR/time_to_accuracy.jsonl with every curve, and its chart
OUT_DIR/time_to_accuracy.png.

Exit codes: 0 when every race ran, 1 when one failed, 2 for bad flags or a --baseline_from
measured with other settings.
"""

from absl import flags

from launch import entry
from trainer import cli
from trainer.bench import races

cli.define_flags("records")
flags.DEFINE_string("out_dir", "runs/benchmark", "Where time_to_accuracy.jsonl and "
                    "time_to_accuracy.png are written.")
flags.DEFINE_integer("crop_size", 227, "Crop side.", lower_bound=1)
flags.DEFINE_string("baseline", "paper", "The bundle (trainer.bundles) or MODEL:RECIPE"
                    "[:PRECISION] whose best held-out accuracy within the budget is the target.")
flags.DEFINE_list("improved", ["improved"], "Each contender raced to it: a bundle, or "
                  "MODEL:RECIPE[:PRECISION] (the records read by tf.data, a step per call).")
flags.DEFINE_integer("held_out_fold", 0, "The fold every race holds out (tune on another "
                     "than the one you report).", lower_bound=0)
flags.DEFINE_string("distribution", "one_device", "Every race's: one_device, or mirrored:N (N "
                    "logical devices without a GPU); a race runs in one process.")
flags.DEFINE_float("budget_seconds", 1200, "Training seconds per race.", lower_bound=0)
flags.DEFINE_float("target_accuracy", None, "A fixed target (0-1) instead of the baseline's "
                   "best.", lower_bound=0, upper_bound=1)
flags.DEFINE_float("eval_every_seconds", 5, "Training seconds between a contender's "
                   "evaluations.", lower_bound=0)
flags.DEFINE_float("baseline_eval_every_seconds", None, "Training seconds between the "
                   "baseline's evaluations (default: the budget / 40).", lower_bound=0)
flags.DEFINE_integer("smoothing", 3, "Evaluations in a window: a race is credited with the "
                     "first evaluation whose mean with the next ones reaches the target (1: a "
                     "single evaluation).", lower_bound=1)
flags.DEFINE_string("baseline_from", None, "The time_to_accuracy.jsonl of an earlier run whose "
                    "baseline, measured with the same settings, is reused instead of run.")
flags.DEFINE_float("improved_epochs", 0, "The contenders' length in epochs (0: each one's "
                   "own).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "The seed of every race (initial weights, order, crops); "
                     "repeat with others to see the spread.")
flags.DEFINE_integer("baseline_seed", None, "The baseline's seed, when it is not --seed: "
                     "contenders of several seeds against one baseline.")
flags.DEFINE_bool("cache", False, "Every race keeps its decoded training records in memory "
                  "(trainer.main's --cache), so that a fast network is not held back by JPEG "
                  "decoding on the cores it trains on.")
flags.mark_flag_as_required("records")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def _validator(flag, check):
    """Registers `check(value)`, which raises ValueError naming a bad value, for `flag` (the
    error line names the flag)."""
    def validate(value):
        try:
            check(value)
        except ValueError as error:
            raise flags.ValidationError(str(error)) from error
        return True
    flags.register_validator(flag, validate)


_validator("baseline", races.contender)
_validator("improved", lambda specs: [races.contender(spec) for spec in specs])
_validator("distribution", races.check_distribution)


def main(argv):
    del argv
    cli.start_process()
    baseline_eval_every_seconds = FLAGS.baseline_eval_every_seconds or FLAGS.budget_seconds / 40
    if FLAGS.budget_seconds < FLAGS.smoothing * baseline_eval_every_seconds:
        raise entry.UserError(
            f"--baseline_eval_every_seconds={baseline_eval_every_seconds:g}: the baseline "
            f"would be evaluated fewer than --smoothing={FLAGS.smoothing} times in "
            f"--budget_seconds={FLAGS.budget_seconds:g}, too few for a target")
    races.race_all(
        FLAGS.baseline, FLAGS.improved, FLAGS.out_dir, baseline_eval_every_seconds,
        target_accuracy=FLAGS.target_accuracy, improved_epochs=FLAGS.improved_epochs,
        baseline_from=FLAGS.baseline_from, baseline_seed=FLAGS.baseline_seed,
        held_out_fold=FLAGS.held_out_fold, records=FLAGS.records, crop_size=FLAGS.crop_size,
        budget_seconds=FLAGS.budget_seconds, eval_every_seconds=FLAGS.eval_every_seconds,
        distribution=FLAGS.distribution, smoothing=FLAGS.smoothing, seed=FLAGS.seed,
        cache=FLAGS.cache)
    return 0


if __name__ == "__main__":
    entry.run(main)
