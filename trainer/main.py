"""Trains an age (or gender) classifier on Adience records.

  python -m trainer.main --records=runs/demo/records --model_dir=runs/lh --recipe=paper
  horovodrun -np 4 python -m trainer.main --records=... --model_dir=... --model=resnet \\
      --recipe=modern --epochs=30

A job restarted with the same --model_dir resumes from its latest checkpoint. SIGTERM or SIGINT
to any process stops the whole job at one step with a checkpoint, exit code 0; a non-finite
loss stops it with exit code 3, keeping the last good checkpoint; bad flags or records exit 2.
"""

import sys

from absl import app
from absl import flags

from trainer import cli
from trainer import data
from trainer import loop
from trainer import strategy

cli.define_job_flags()
cli.define_training_flags()
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.require("model_dir", *(["records"] if FLAGS.data == "records" else []))
    threads = cli.start_process()
    try:
        data.describe(FLAGS.data, FLAGS.records, FLAGS.task, FLAGS.held_out_fold,
                      FLAGS.crop_size)
        config = cli.train_config(input_threads=threads["intra_op"])
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return cli.ERROR_EXIT_CODE
    backend = strategy.create(FLAGS.strategy, logical_cpus=FLAGS.logical_cpus)
    try:
        loop.train(config, backend)
    except loop.TrainingError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    return 0


if __name__ == "__main__":
    app.run(main)
