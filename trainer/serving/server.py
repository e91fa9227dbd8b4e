"""The HTTP server of trainer.serve: a page, TF Serving's REST predict API, faces in photos.

  GET  /                                          the page (page.html): pick or drop a photo,
                                                  see a box and an age group on each face
  POST /v1/faces                                  a photo as the request body -> its faces,
                                                  boxes and ages (JSON)
  POST /v1/models/NAME[/versions/N]:predict       TF Serving's REST predict API (rest.py)
  GET  /v1/models/NAME[/versions/N]               TF Serving's model status

The standard library's ThreadingHTTPServer: each connection is served on its own thread, so a
slow client or a long photo never holds up the others, and nothing beyond Python is needed for
three routes of JSON. The heavy part of a request (decoding, face detection, the model) runs at
most CONCURRENT_WORK at a time: the rest wait their turn instead of all holding decoded photos
in memory at once. Every answer is JSON (the page aside), errors {"error": "..."} with a 4xx
status for what the client sent; no input stops the server.
"""

import dataclasses
import http.server
import json
import os
import pathlib
import re
import socket
import threading
import traceback
import urllib.parse

import tensorflow as tf

from launch import entry
from trainer.serving import faces
from trainer.serving import predict
from trainer.serving import rest

PAGE = pathlib.Path(__file__).with_name("page.html")
# Requests decoding, detecting or predicting at once; TensorFlow's ops use every core anyway.
CONCURRENT_WORK = 4
# A client that stops sending in the middle of a request frees its thread after this long.
READ_TIMEOUT_SECONDS = 30
# An upload over the limit is read and thrown away up to this many times the limit, so that
# the client reads the 413 rather than a reset connection; past that the connection is closed.
DRAIN_FACTOR = 4
MODEL_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?::(?P<verb>\w+))?")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_request_bytes: int  # a larger request body is answered 413
    max_instances: int  # images (instances) in one predict request


class Service:
    """What the routes do, apart from HTTP: a loaded SavedModel, its version and the detector."""

    def __init__(self, saved_model, model_name, limits, detector):
        module = predict.load_module(saved_model)
        self.signatures = dict(module.signatures)
        self.class_names = predict.class_names_of(module)
        self.metadata = json.loads(module.metadata.numpy())
        folder = os.path.basename(os.path.normpath(predict.version_to_load(saved_model)))
        self.version = int(folder) if folder.isascii() and folder.isdigit() else 1
        self.model_name, self.limits, self._detector = model_name, limits, detector
        self._work = threading.BoundedSemaphore(CONCURRENT_WORK)
        self.page = PAGE.read_bytes()

    def check_model(self, name, version):
        if name != self.model_name or version not in (None, str(self.version)):
            wanted = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise rest.RequestError(f"Servable not found for request: {wanted}", status=404)

    def status(self):
        """TF Serving's answer to GET /v1/models/NAME."""
        return {"model_version_status": [{"version": str(self.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def predict(self, request):
        """TF Serving's predict: a decoded JSON request in, its JSON answer out."""
        name, arrays, row = rest.parse(request, self.signatures, self.limits.max_instances)
        _check_encoded_images(arrays)
        with self._work:
            try:
                outputs = self.signatures[name](**{key: tf.constant(value)
                                                   for key, value in arrays.items()})
            except tf.errors.InvalidArgumentError as error:  # e.g. an image damaged inside
                raise rest.RequestError(_op_message(error)) from None
        return rest.response(outputs, row)

    def faces(self, photo):
        """A photo's faces ({"width", "height", "faces": [...]}), each with its place in the
        photo (as trainer.predict --detect_faces --json describes it) and the model's answer."""
        serve = self.signatures[predict.SIGNATURE]
        with self._work:
            pixels = faces.decode_photo(photo)  # PhotoError: refused before or while decoding
            found = self._detector.find(pixels)
            crops = tf.constant([faces.encode(face.crop) for face in found], tf.string)
            probabilities = serve(image_bytes=crops)["probabilities"].numpy() if found else []
        height, width = pixels.shape[:2]
        return {"width": width, "height": height,
                "faces": [{"face": number, **face.description(),
                           **predict.answer(p, self.class_names)}
                          for number, (face, p) in enumerate(zip(found, probabilities), 1)]}


def _check_encoded_images(arrays):
    """Refuses, from their headers alone, encoded images that are not images, over the pixel
    limit, or over it together: TensorFlow would decode them whole. (The model's only string
    input is image bytes.)"""
    total = 0
    for array in arrays.values():
        if array.dtype != object:
            continue
        for index, encoded in enumerate(array.flat):
            try:
                image = faces.open_photo(encoded)
            except faces.PhotoError as error:
                raise rest.RequestError(f"instance {index}: {error}") from None
            total += image.width * image.height
    if total > faces.MAX_PHOTO_PIXELS:
        raise rest.RequestError(f"the images of this request hold {total:,} pixels together, "
                                f"over the limit of {faces.MAX_PHOTO_PIXELS:,}: send fewer at "
                                f"a time")


def _op_message(error):
    """The cause in a TensorFlow error raised inside a function, without its graph trail."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    trail = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[")
    causes = [line for line in lines if not line.startswith(trail)]
    return (causes or lines or ["invalid input"])[0].split(" [Op:")[0]


class Handler(http.server.BaseHTTPRequestHandler):
    """One request: routed, its body read within the limits, answered, the connection closed."""

    protocol_version = "HTTP/1.1"  # so that a client's "Expect: 100-continue" can be refused
    server_version = "agenet"
    timeout = READ_TIMEOUT_SECONDS

    def do_GET(self):
        self._answer(self._get)

    def do_HEAD(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _get(self, path):
        service = self.server.service
        if path in ("/", "/index.html"):
            return 200, service.page, "text/html; charset=utf-8"
        match = MODEL_PATH.fullmatch(path)
        if match and not match["verb"]:
            service.check_model(match["name"], match["version"])
            return 200, service.status()
        if path == "/v1/faces" or match:
            raise rest.RequestError(f"{path} takes POST", status=405)
        raise rest.RequestError(f"no such page: {path}", status=404)

    def _post(self, path):
        service = self.server.service
        match = MODEL_PATH.fullmatch(path)
        if path == "/v1/faces":
            return 200, service.faces(self._body())
        if match and match["verb"] == "predict":
            service.check_model(match["name"], match["version"])
            try:
                request = json.loads(self._body())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise rest.RequestError(f"malformed JSON: {error}") from None
            return 200, service.predict(request)
        if match and not match["verb"]:
            raise rest.RequestError(f"{path} takes GET", status=405)
        raise rest.RequestError(f"no such API: {path} (this server answers :predict and "
                                f"/v1/faces)", status=404)

    def _answer(self, route):
        """Runs the route; every outcome becomes a response, JSON unless it is the page."""
        try:
            status, *body = route(urllib.parse.urlsplit(self.path).path)
        except rest.RequestError as error:
            status, body = error.status, [{"error": str(error)}]
        except faces.PhotoError as error:
            status, body = 400, [{"error": str(error)}]
        except TimeoutError:
            status, body = 408, [{"error": f"the request was not received within "
                                           f"{READ_TIMEOUT_SECONDS} s"}]
        except Exception as error:  # a bug must not end the server; the log keeps the trace
            traceback.print_exc()
            status, body = 500, [{"error": f"internal error: {type(error).__name__}: {error}"}]
        self._send(status, *body)

    def _length(self):
        """The body's declared length; RequestError when absent, chunked, invalid or too large."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise rest.RequestError("chunked uploads are not taken: send a Content-Length",
                                    status=411)
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise rest.RequestError("a Content-Length is required", status=411)
        if not declared.strip().isdigit():
            raise rest.RequestError(f"Content-Length {declared!r} is not a number of bytes")
        length, limit = int(declared), self.server.service.limits.max_request_bytes
        if length > limit:
            raise rest.RequestError(f"the request holds {length:,} bytes, over the limit of "
                                    f"{limit:,} (trainer.serve --max_request_mb)", status=413)
        return length

    def _body(self):
        try:
            length = self._length()
        except rest.RequestError as error:
            if error.status == 413:
                self._drain()
            raise
        body = self.rfile.read(length)
        if len(body) < length:
            raise rest.RequestError(f"the upload ended after {len(body):,} of {length:,} bytes")
        return body

    def _drain(self):
        """Reads an oversized body and throws it away (up to DRAIN_FACTOR times the limit)."""
        length = int(self.headers["Content-Length"])
        if length > DRAIN_FACTOR * self.server.service.limits.max_request_bytes:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                return
            length -= len(chunk)

    def handle_expect_100(self):
        """Answers 413 before the client sends a body that is over the limit."""
        if self.command == "POST":
            try:
                self._length()
            except rest.RequestError as error:
                if error.status == 413:
                    self._send(413, {"error": str(error)})
                    return False
        return super().handle_expect_100()

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, an unknown method), as JSON."""
        self._send(code, {"error": message or explain or http.HTTPStatus(code).phrase})

    def _send(self, status, body, content_type="application/json"):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client has gone


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients connecting at once wait in the queue, not refused
    service = None  # the Service, set once the model is loaded


class Server6(Server):
    address_family = socket.AF_INET6


def bind(host, port):
    """A Server listening on host:port (requests wait until it serves); entry.UserError when
    the address cannot be had."""
    try:
        return (Server6 if ":" in host else Server)((host, port), Handler)
    except OSError as error:
        raise entry.UserError(f"cannot listen on {host}:{port}: "
                              f"{(error.strerror or str(error)).lower()}") from None
    except OverflowError:
        raise entry.UserError(f"--port {port} is not a port (0-65535)") from None


def url(server):
    host, port = server.server_address[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def metadata_of(service):
    """One line of what is served, for the start-up message."""
    meta = service.metadata
    return (f"{meta.get('model')} ({meta.get('task')}, step {meta.get('step')}), version "
            f"{service.version}, as model '{service.model_name}'")


def serve_until_stopped(server):
    """Serves until SIGINT or SIGTERM (raised as KeyboardInterrupt by the caller's handler)."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

