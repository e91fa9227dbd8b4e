"""The command that evaluates a trained checkpoint (the library is trainer.evaluation) on
held-out records: exact and 1-off accuracy, per class, and the confusion matrix, each example
counted once under any strategy.

  python -m trainer.evaluate --model_dir=runs/lh --records=runs/demo/records --eval_crops=10
  horovodrun -np 2 python -m trainer.evaluate --model_dir=runs/lh --records=... --split=test

By default it evaluates the job's own held-out split (run.json) with its latest checkpoint.
"""

import json

from absl import flags
import tensorflow as tf

from launch import entry
from trainer import checkpoint as checkpoint_lib
from trainer import cli
from trainer import evaluation
from trainer import loop
from trainer import metrics
from trainer import strategy

cli.define_job_flags()
cli.define_flags("checkpoint")
flags.DEFINE_string("split", None, "The records' split to evaluate (default: the job's "
                    "held-out split, e.g. fold0; 'test' for the 60/20/20 protocol).")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS
EVAL_BATCH_SIZE = 50  # per replica: the paper's batch; evaluation holds no gradients


def main(argv):
    del argv
    threads = cli.start_process()
    run = checkpoint_lib.read_run(FLAGS.model_dir)
    info = evaluation.held_out(run, FLAGS.records or run["records"], FLAGS.split)
    path = FLAGS.checkpoint or tf.train.latest_checkpoint(
        checkpoint_lib.checkpoint_dir(FLAGS.model_dir))
    if not path:
        raise entry.UserError(f"--model_dir={FLAGS.model_dir}: no checkpoint in it")
    backend = strategy.create(FLAGS.strategy, logical_cpus=FLAGS.logical_cpus)
    batch = loop.global_batch_size(FLAGS.batch_size, EVAL_BATCH_SIZE, backend.num_replicas)
    summary = evaluation.evaluate_checkpoint(backend, run, info, path, batch,
                                             int(FLAGS.eval_crops), threads["intra_op"])
    if backend.is_chief:
        print(metrics.format_confusion(summary["confusion"], info.class_names))
        print(f"{info.eval_examples} examples of {', '.join(info.eval_splits)}, "
              f"{FLAGS.eval_crops} crop(s): accuracy {summary['accuracy']:.4f}, "
              f"1-off {summary['accuracy_1off']:.4f}", flush=True)
        print(json.dumps({"checkpoint": path, "splits": list(info.eval_splits),
                          "crops": int(FLAGS.eval_crops), **summary}), flush=True)
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("model_dir")
    entry.run(main)
