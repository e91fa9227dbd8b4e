"""The command that exports a trained job as a SavedModel taking image bytes (the work:
trainer/serving/saved_model.py).

  python -m trainer.export --model_dir=runs/lh --export_dir=runs/lh/export
  python -m trainer.export --model_dir=runs/lh --export_dir=runs/lh/export10 --eval_crops=10

Exit codes: 0 when exported; 2 for a mistake found before any work (not a job folder, no
checkpoint, an --export_dir that exists or cannot be written); 1 when the disk fails during the
save (nothing is left at --export_dir).
"""

import json

from absl import flags

from launch import entry
from trainer import cli
from trainer.serving import saved_model

cli.define_flags("model_dir", "checkpoint", "eval_crops")
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel (must not exist).")
flags.mark_flags_as_required(["model_dir", "export_dir"])
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.start_process()
    metadata = saved_model.export(FLAGS.model_dir, FLAGS.export_dir, int(FLAGS.eval_crops),
                                  FLAGS.checkpoint)
    print(f"exported {metadata['model']} ({metadata['task']}, step {metadata['step']}, "
          f"{metadata['crops']} crop(s)) to {FLAGS.export_dir}", flush=True)
    print(json.dumps(metadata), flush=True)
    return 0


if __name__ == "__main__":
    entry.run(main)
