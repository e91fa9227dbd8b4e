"""The command that predicts the age group (or gender) of face images with an exported
SavedModel (the work: trainer/serving/predict.py).

  python -m trainer.predict --saved_model=runs/lh/export face1.jpg faces/ ...
  python -m trainer.predict --saved_model=runs/lh/export --json faces/ > predictions.jsonl
  python -m trainer.predict --saved_model=runs/lh/export --detect_faces party.jpg photos/

Without --detect_faces, each file must be a face crop aligned as Adience's are (a whole photo
gives a meaningless answer). One line per image (per face with --detect_faces, with its box and
landmarks in the photo's pixels): the group, its probability and the top 3; or a JSON object per
line with --json. A file that is not a readable image, one whose header claims over 100,000,000
pixels (a decompression bomb: refused before decoding, with or without --detect_faces), or a
photo with no face found, gets an error line and the others go on. Exit codes: 0 when every
file was predicted; 1 if any failed, or there was no image at all; 2 for a mistake found before
any work (no such SavedModel, no file given).
"""

import json
import sys

from absl import flags

from launch import entry
from trainer.serving import faces
from trainer.serving import predict as serving

flags.DEFINE_string("saved_model", None, "A SavedModel written by trainer.export.")
flags.DEFINE_bool("json", False, "One JSON object per image (per face) instead of text.")
flags.DEFINE_bool("detect_faces", False, "For whole photos: find the faces (MTCNN), align each "
                  "as Adience's aligned faces are (eyes level, the same margin) and predict each "
                  "face, with its box and landmarks in the photo's pixels; a photo with no face "
                  "is an error line. Leave it off for face crops already aligned (Adience's "
                  f"aligned/ images). Photos over {faces.MAX_PHOTO_PIXELS:,} pixels are refused "
                  "from their header.")
flags.DEFINE_integer("images_per_call", 32, "Images (faces, with --detect_faces) per call of "
                     "the model.", lower_bound=1)
flags.DEFINE_integer("batch_size", None, "Old name of --images_per_call.", lower_bound=1)
flags.mark_flag_as_required("saved_model")
FLAGS = flags.FLAGS


def images_per_call():
    """--images_per_call, or the value of its old name --batch_size with a pointer to the new."""
    if FLAGS.batch_size is None:
        return FLAGS.images_per_call
    if FLAGS["images_per_call"].present:
        raise entry.UserError("--batch_size is the old name of --images_per_call: give only "
                              "--images_per_call")
    print("note: --batch_size is now --images_per_call (images per call of the model); the "
          "old name will go away", file=sys.stderr, flush=True)
    return FLAGS.batch_size


def main(argv):
    per_call = images_per_call()
    serving.check_saved_model(FLAGS.saved_model)
    listed = serving.image_files(argv[1:])
    serve, class_names = serving.load(FLAGS.saved_model)
    detector = faces.Detector() if FLAGS.detect_faces else None
    failed = 0
    for result in serving.predict(serve, class_names, listed, per_call, detector):
        failed += "error" in result
        print(json.dumps(result) if FLAGS.json else serving.describe(result), flush=True)
    if failed:
        print(f"{failed} file(s) could not be read{' or held no face' if detector else ''}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    entry.run(main, positional="IMAGE...")
