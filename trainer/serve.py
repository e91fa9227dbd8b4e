"""The command that serves an exported SavedModel over HTTP: a page for people, TF Serving's REST
API for programs (the work: trainer/serving/server.py and rest.py).

  python -m trainer.serve --saved_model=runs/demo/resnet/export --port=8080
  python -m trainer.serve --saved_model=runs/demo/resnet/export --host=0.0.0.0   # all interfaces

Then open http://127.0.0.1:8080/ and pick or drop a photo: each face gets a box and an age group
with its probability. Programs POST a photo to /v1/faces (its faces, boxes and ages as JSON),
or TF Serving's REST requests to /v1/models/agenet:predict (face crops, as base64 JPEG/PNG or
as pixels with "signature_name": "serving_pixels"). It listens on 127.0.0.1 only unless --host
says otherwise, and has no authentication of its own: to expose it, put it behind what the site
uses (a reverse proxy with TLS and log-in). Bad input never stops it: a request it cannot take
is a 4xx answer {"error": "..."} (413 over --max_request_mb or --max_instances); an image whose
header claims over 100,000,000 pixels (a decompression bomb) is refused before it is decoded.
SIGINT or SIGTERM stop it (exit 0). Exit codes: 2 for a mistake found before serving (no such
SavedModel, a port in use).
"""

import signal

from absl import flags

from launch import entry
from trainer.serving import faces
from trainer.serving import predict
from trainer.serving import server

flags.DEFINE_string("saved_model", None, "A SavedModel written by trainer.export, or its base "
                    "folder (its highest version is served).")
flags.DEFINE_string("host", "127.0.0.1", "The address to listen on: 127.0.0.1 is this machine "
                    "only; 0.0.0.0 (or ::) every interface. It has no authentication of its "
                    "own.")
flags.DEFINE_integer("port", 8080, "The port to listen on (0: any free port, printed).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_string("model_name", "agenet", "The model's name in the REST API's paths "
                    "(/v1/models/NAME:predict), as TF Serving's --model_name.")
flags.DEFINE_float("max_request_mb", 32, "A request body over this many megabytes (10^6 bytes) "
                   "is answered 413.", lower_bound=0.001)
flags.DEFINE_integer("max_instances", 64, "The most images in one predict request; more is "
                     "answered 413.", lower_bound=1)
flags.mark_flag_as_required("saved_model")
FLAGS = flags.FLAGS


def _stop(signal_number, frame):
    raise KeyboardInterrupt


def main(argv):
    del argv
    predict.check_saved_model(FLAGS.saved_model)
    bound = server.bind(FLAGS.host, FLAGS.port)  # before the slow part: a port in use says so
    limits = server.Limits(max_request_bytes=int(FLAGS.max_request_mb * 1e6),
                           max_instances=FLAGS.max_instances)
    bound.service = server.Service(FLAGS.saved_model, FLAGS.model_name, limits,
                                   faces.Detector())
    signal.signal(signal.SIGTERM, _stop)
    print(f"serving {server.metadata_of(bound.service)} at {server.url(bound)} (POST "
          f"/v1/faces, /v1/models/{FLAGS.model_name}:predict); Ctrl-C stops", flush=True)
    server.serve_until_stopped(bound)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    entry.run(main)
