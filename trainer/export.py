"""The command that exports a trained job as a SavedModel taking face images (the work:
trainer/serving/saved_model.py, and trainer/serving/litert.py for --litert).

  python -m trainer.export --model_dir=runs/lh --export_dir=runs/lh/export
  python -m trainer.export --model_dir=runs/lh --export_dir=runs/lh/export --eval_crops=10
  python -m trainer.export --model_dir=runs/lh --export_dir=runs/lh/export --litert

--export_dir is the model's base folder, TF Serving's layout: each export adds the next version
folder in it (runs/lh/export/1, then 2, ...). Exit codes: 0 when exported; 2 for a mistake found
before any work (not a job folder, no checkpoint, an --export_dir that is a file, a SavedModel
itself or cannot be written, no held-out records for --litert); 1 when the disk fails during
the save or the LiteRT model disagrees with the SavedModel (no version is added).
"""

import json
import os

from absl import flags

from launch import entry
from trainer import cli
from trainer.serving import litert
from trainer.serving import saved_model

cli.define_flags("model_dir", "checkpoint", "eval_crops")
flags.DEFINE_string("export_dir", None, "The model's base folder: the export is written to its "
                    "next version folder, EXPORT_DIR/1, EXPORT_DIR/2, ... (TF Serving's layout).")
flags.DEFINE_bool("litert", False, f"Also write {litert.FILE} (LiteRT) from the serving_pixels "
                  f"signature, checked against the SavedModel on {litert.FACES} held-out faces "
                  f"of the job's records.")
flags.mark_flags_as_required(["model_dir", "export_dir"])
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.start_process()
    exported = saved_model.export(FLAGS.model_dir, FLAGS.export_dir, int(FLAGS.eval_crops),
                                  FLAGS.checkpoint, with_litert=FLAGS.litert)
    metadata = exported.metadata
    print(f"exported {metadata['model']} ({metadata['task']}, step {metadata['step']}, "
          f"{metadata['crops']} crop(s)) to {exported.path}", flush=True)
    if exported.litert:
        for line in litert.describe(exported.litert, os.path.join(exported.path, litert.FILE)):
            print(line, flush=True)
    print(json.dumps({"saved_model": exported.path, **metadata, "litert": exported.litert}),
          flush=True)
    return 0


if __name__ == "__main__":
    entry.run(main)
