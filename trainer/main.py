"""Trains an age (or gender) classifier on Adience records.

  python -m trainer.main --records=runs/demo/records --model_dir=runs/lh --recipe=paper
  horovodrun -np 4 python -m trainer.main --records=... --model_dir=... --model=resnet \\
      --recipe=modern --epochs=30

A job restarted with the same --model_dir resumes from its latest checkpoint. SIGTERM or SIGINT
to any process stops the whole job at one step with a checkpoint, exit code 0; a non-finite
loss stops it with exit code 3, keeping the last good checkpoint; bad flags or records exit 2,
before any work; damaged records or a full disk during training exit 1, keeping the last good
checkpoint. Every error is one line on stderr, `error: ...`.
"""

from absl import flags

from launch import entry
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
    cli.require("model_dir", *(["records"] if FLAGS.data in data.FROM_RECORDS else []))
    threads = cli.start_process()
    config = cli.train_config(input_threads=threads["intra_op"])
    info = loop.describe_data(config)  # the records read and checked once, before any work
    backend = strategy.create(FLAGS.strategy, logical_cpus=FLAGS.logical_cpus,
                              gradient_compression=FLAGS.gradient_compression)
    loop.train(config, backend, info)
    return 0


if __name__ == "__main__":
    entry.run(main)
