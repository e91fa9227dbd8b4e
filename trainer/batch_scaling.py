"""Held-out accuracy against global batch: where the recipe stops scaling (trainer.bench).

  python -m trainer.batch_scaling --records=runs/big/records_64 --crop_size=56 --model=resnet \\
      --recipe=modern --batch_sizes=64,128,256,512,1024 --epochs=30 \\
      --distribution=mirrored:8 --out_dir=runs/big/batch_scaling

The same job (records, model, recipe, epochs, seed) trains at each global batch, smallest
first, through trainer.main itself in a fresh model folder (OUT_DIR/models/...): the learning
rate scaled linearly from the recipe's reference batch, with its warm-up, as a user's job at
that --batch_size gets. Each is evaluated on the held-out fold 0 at the end (center crop).
Out: a table (batch, steps, warm-up, peak rate, accuracies, each against the smallest batch's),
OUT_DIR/batch_scaling.jsonl (a line per batch) and the chart OUT_DIR/batch_scaling.png.

Exit codes: 0 when every batch ran, 1 when one failed (named), 2 for bad flags or records.
"""

from absl import flags

from launch import entry
from trainer import cli
from trainer import data
from trainer import models
from trainer import recipes
from trainer.bench import batch_sweep
from trainer.bench import processes

cli.define_flags("records")
flags.DEFINE_string("out_dir", "runs/batch_scaling", "Where batch_scaling.jsonl, "
                    "batch_scaling.png and the model folders are written.")
flags.DEFINE_integer("crop_size", 227, "Crop side.", lower_bound=1)
flags.DEFINE_enum("model", "resnet", models.names(), "The network.")
flags.DEFINE_enum("recipe", "modern", sorted(recipes.RECIPES), "The recipe, its rate scaled "
                  "from its reference batch.")
flags.DEFINE_list("batch_sizes", ["64", "128", "256", "512", "1024"], "Global batches, each "
                  "a multiple of the replicas.")
flags.DEFINE_float("epochs", 0, "Every batch's length in epochs (0: the recipe's own).",
                   lower_bound=0)
flags.DEFINE_string("distribution", "one_device", "one_device, mirrored:N (N logical devices "
                    "without a GPU) or horovod:N (N processes on this host).")
flags.DEFINE_integer("seed", 0, "The seed of every batch's job (initial weights, order, "
                     "crops).")
flags.DEFINE_bool("cache", False, "Every job keeps its decoded training records in memory "
                  "(trainer.main's --cache).")
flags.mark_flag_as_required("records")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def _batch_sizes(values):
    if not values or not all(value.isdigit() and int(value) >= 1 for value in values):
        raise flags.ValidationError(f"--batch_sizes: positive integers, not "
                                    f"{','.join(values)!r}")
    return True


def _distribution(text):
    try:
        processes.Distribution.parse(text)
    except ValueError as error:
        raise flags.ValidationError(f"--distribution: {error}") from error
    return True


flags.register_validator("batch_sizes", _batch_sizes)
flags.register_validator("distribution", _distribution)


def main(argv):
    del argv
    cli.start_process()
    batch_sizes = [int(value) for value in FLAGS.batch_sizes]
    try:
        batch_sweep.check_batch_sizes(batch_sizes, FLAGS.distribution)
    except ValueError as error:
        raise entry.UserError(str(error)) from None
    # The records read and checked once here, so that a mistake is one line before any job.
    data.describe("records", FLAGS.records, "age", batch_sweep.HELD_OUT_FOLD, FLAGS.crop_size)
    job = batch_sweep.Job(
        records=FLAGS.records, model=FLAGS.model, recipe=FLAGS.recipe,
        crop_size=FLAGS.crop_size, epochs=FLAGS.epochs, distribution=FLAGS.distribution,
        seed=FLAGS.seed, cache=FLAGS.cache)
    batch_sweep.sweep(job, batch_sizes, FLAGS.out_dir)
    return 0


if __name__ == "__main__":
    entry.run(main)
