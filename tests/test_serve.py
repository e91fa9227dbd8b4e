"""trainer.serve: TF Serving's REST predict API (row and columnar, signature_name, b64), faces in a
photo, its page in a real browser, and a server that bad input never stops. One server for the
module, started as a user starts it, on 127.0.0.1 with small limits."""

import base64
import concurrent.futures
import http.client
import json
import signal
import socket

import numpy as np
import psutil
import pytest
import tensorflow as tf

from conftest import TINY_RECORD_SIZE, Watched, json_lines, run
from input import images
from launch import browser
from launch import entry
from test_faces import ASTRONAUT, ASTRONAUT_FACE, COFFEE, overlap, png_claiming
from trainer.serving import faces
from trainer.serving import predict as serving
from trainer.serving import rest
from trainer.serving import server as server_lib

MAX_REQUEST_MB = 1
MAX_INSTANCES = 8
OUTPUTS = {"probabilities", "class_id", "label"}


@pytest.fixture(scope="module")
def server(python, tiny_export):
    """The running server: its process, host and port (port 0: the one it printed)."""
    watched = Watched([python, "-m", "trainer.serve", f"--saved_model={tiny_export.parent}",
                       "--port=0", f"--max_request_mb={MAX_REQUEST_MB}",
                       f"--max_instances={MAX_INSTANCES}"])
    watched.wait_for(lambda w: any(line.startswith("serving ") for line in w.stdout))
    address = next(line for line in watched.stdout if line.startswith("serving ")).split(
        " at http://")[1].split("/")[0]
    host, port = address.rsplit(":", 1)
    watched.host, watched.port = host, int(port)
    yield watched
    if watched.process.poll() is None:
        watched.process.kill()
        watched.finish()


@pytest.fixture(scope="module")
def model(tiny_export):
    """The exported SavedModel's signatures and class names, loaded here to compare with."""
    loaded = tf.saved_model.load(str(tiny_export))
    return loaded.signatures, serving.class_names_of(loaded)


@pytest.fixture(scope="module")
def face_files(synthetic_tree):
    return sorted((synthetic_tree / "aligned").rglob("*.jpg"))[:3]


def call(server, method, path, body=None, headers=None):
    """(status, decoded JSON or text) of one request; a dict body is sent as JSON."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=120)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    is_json = response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(data) if is_json else data.decode()


def b64(data):
    return {"b64": base64.b64encode(data).decode()}


def predict(server, request, path="/v1/models/agenet:predict"):
    return call(server, "POST", path, request)


def test_it_listens_on_127_0_0_1_only_unless_told_otherwise(server):
    listening = [connection.laddr for connection in
                 psutil.Process(server.process.pid).net_connections(kind="inet")
                 if connection.status == psutil.CONN_LISTEN]
    assert [address.ip for address in listening] == ["127.0.0.1"]
    assert call(server, "GET", "/v1/models/agenet") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                          "error_message": ""}}]})


def test_row_and_columnar_requests_are_answered_as_tf_serving_answers_them(
        server, model, face_files):
    signatures, class_names = model
    encoded = [path.read_bytes() for path in face_files]
    expected = signatures["serving_default"](image_bytes=tf.constant(encoded))
    probabilities = expected["probabilities"].numpy()
    for instances in ([b64(data) for data in encoded],
                      [{"image_bytes": b64(data)} for data in encoded]):
        for path in ("/v1/models/agenet:predict", "/v1/models/agenet/versions/1:predict"):
            status, answer = predict(server, {"instances": instances}, path)
            assert status == 200, answer
            predictions = answer["predictions"]
            assert [set(p) for p in predictions] == [OUTPUTS] * len(encoded)
            np.testing.assert_allclose([p["probabilities"] for p in predictions], probabilities,
                                       atol=1e-6)
            assert [p["class_id"] for p in predictions] == probabilities.argmax(1).tolist()
            assert [p["label"] for p in predictions] == [
                class_names[p["class_id"]] for p in predictions]
    for inputs in ({"image_bytes": [b64(data) for data in encoded]},
                   [b64(data) for data in encoded]):
        status, answer = predict(server, {"inputs": inputs})
        assert status == 200 and set(answer) == {"outputs"}, answer
        assert set(answer["outputs"]) == OUTPUTS
        np.testing.assert_allclose(answer["outputs"]["probabilities"], probabilities, atol=1e-6)
        assert answer["outputs"]["label"] == [label.decode()
                                              for label in expected["label"].numpy()]
    assert predict(server, {"instances": [b64(encoded[0])]}, "/v1/models/other:predict") == (
        404, {"error": "Servable not found for request: Latest(other)"})


def test_signature_name_picks_the_pixels_signature(server, model, face_files):
    signatures, _ = model
    encoded = [path.read_bytes() for path in face_files]
    pixels = [images.decode_and_resize(data, TINY_RECORD_SIZE).numpy() for data in encoded]
    status, answer = predict(server, {"signature_name": "serving_pixels",
                                      "instances": [p.tolist() for p in pixels]})
    assert status == 200, answer
    from_bytes = signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]],
                               from_bytes["probabilities"].numpy(), atol=1e-5)
    status, answer = predict(server, {"signature_name": "serving_pixels",
                                      "inputs": {"images": [p.tolist() for p in pixels]}})
    assert status == 200 and len(answer["outputs"]["class_id"]) == len(pixels)
    status, answer = predict(server, {"signature_name": "serving_pixels",
                                      "instances": [pixels[0][:10].tolist()]})
    assert status == 400 and f"[-1, {TINY_RECORD_SIZE}, {TINY_RECORD_SIZE}, 3]" in \
        answer["error"]
    status, answer = predict(server, {"signature_name": "classify", "instances": [1]})
    assert status == 400 and '"classify" not found' in answer["error"]


def test_a_string_output_is_base64_only_when_its_name_ends_in_bytes():
    outputs = {"label": tf.constant([b"25-32", b"8-12"]),
               "face_bytes": tf.constant([b"\x89PNG\x00", b"\xff\xd8"]),
               "class_id": tf.constant([4, 2], tf.int64)}
    assert rest.response(outputs, row=True) == {"predictions": [
        {"label": "25-32", "face_bytes": {"b64": "iVBORwA="}, "class_id": 4},
        {"label": "8-12", "face_bytes": {"b64": "/9g="}, "class_id": 2}]}
    assert rest.response({"label": outputs["label"]}, row=False) == {
        "outputs": ["25-32", "8-12"]}


def test_a_photo_gets_its_faces_with_boxes_and_ages(server, model):
    signatures, class_names = model
    status, answer = call(server, "POST", "/v1/faces", ASTRONAUT.read_bytes(),
                          {"Content-Type": "image/png"})
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == (512, 512)
    (face,) = answer["faces"]
    assert overlap(face["box"], ASTRONAUT_FACE) > 0.8
    assert set(face["landmarks"]) == set(faces.LANDMARKS)
    # The server's answer is the model's on the face aligned as trainer.predict aligns it.
    (found,) = faces.Detector().find(ASTRONAUT.read_bytes())
    probabilities = signatures["serving_default"](
        image_bytes=tf.constant([faces.encode(found.crop)]))["probabilities"].numpy()[0]
    assert face["label"] == class_names[probabilities.argmax()]
    np.testing.assert_allclose(face["probability"], probabilities.max(), atol=1e-5)
    assert [label for label, _ in face["top"]] == [
        class_names[i] for i in probabilities.argsort()[::-1][:serving.TOP]]
    assert call(server, "POST", "/v1/faces", COFFEE.read_bytes()) == (
        200, {"width": 600, "height": 400, "faces": []})


def test_bad_input_is_a_json_4xx_and_the_server_goes_on(server, face_files, tmp_path):
    face = face_files[0].read_bytes()
    bomb = png_claiming(30_000, 30_000)
    refused = [
        (("POST", "/v1/faces", b"not a photo"), 400, "not a readable image"),
        (("POST", "/v1/faces", ASTRONAUT.read_bytes()[:20_000]), 400, "not a readable image"),
        (("POST", "/v1/faces", bomb), 400, "over the limit of 100,000,000 pixels"),
        (("POST", "/v1/faces", b"x" * int(1.2e6 * MAX_REQUEST_MB)), 413, "over the limit"),
        (("POST", "/v1/models/agenet:predict", b'{"instances": [{"b64": '), 400, "malformed"),
        (("POST", "/v1/models/agenet:predict", {"instances": [b64(bomb)]}), 400,
         "instance 0: more than 178,956,970 pixels, over the limit of 100,000,000"),
        (("POST", "/v1/models/agenet:predict",
          {"instances": [b64(png_claiming(8_000, 8_000))] * 2}), 400,
         "128,000,000 pixels together"),
        (("POST", "/v1/models/agenet:predict", {"instances": [b64(b"text")]}), 400,
         "not a readable image"),
        (("POST", "/v1/models/agenet:predict", {"instances": [{"b64": "@@"}]}), 400,
         "not valid base64"),
        (("POST", "/v1/models/agenet:predict", {"instances": [b64(face)] * 9}), 413,
         f"more than {MAX_INSTANCES} instances"),
        (("POST", "/v1/models/agenet:predict", {"inputs": [], "instances": []}), 400,
         "exactly one of"),
        (("GET", "/v1/faces", None), 405, "takes POST"),
        (("GET", "/favicon.ico", None), 404, "no such page"),
    ]
    for request, status, needle in refused:
        answer = call(server, *request)
        assert answer[0] == status and needle in answer[1]["error"], (request[:2], answer)
    # trainer.predict refuses the decompression bomb from its header too, without detection.
    (tmp_path / "bomb.png").write_bytes(bomb)
    assert "over the limit" in serving.read_image(tmp_path / "bomb.png")[1]
    assert predict(server, {"instances": [b64(face)]})[0] == 200
    assert server.process.poll() is None


def test_a_truncated_upload_is_refused_while_a_stalled_one_holds_up_nobody(server, face_files):
    stalled = socket.create_connection((server.host, server.port))
    stalled.sendall(b"POST /v1/faces HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    truncated = socket.create_connection((server.host, server.port))
    truncated.sendall(b"POST /v1/faces HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                      + b"\x89PNG" * 250)
    truncated.shutdown(socket.SHUT_WR)  # the client gives up after 1,000 bytes
    answer = b"".join(iter(lambda: truncated.recv(65536), b""))
    truncated.close()
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body) == {"error": "the upload ended after 1,000 of 100,000 bytes"}
    status, _ = predict(server, {"instances": [b64(face_files[0].read_bytes())]})
    assert status == 200  # while the stalled upload still waits for its body
    stalled.close()


def test_fifty_concurrent_requests_are_all_answered(server, face_files):
    requests = [{"instances": [b64(face_files[i % len(face_files)].read_bytes())]}
                for i in range(50)]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda request: predict(server, request), requests))
    assert [status for status, _ in answers] == [200] * len(requests)
    alone = [predict(server, request)[1] for request in requests[:len(face_files)]]
    for i, (_, answer) in enumerate(answers):
        np.testing.assert_allclose(answer["predictions"][0]["probabilities"],
                                   alone[i % len(face_files)]["predictions"][0]["probabilities"],
                                   atol=1e-6)


def test_the_page_in_chromium_shows_each_faces_age_on_its_box(python, server, tmp_path):
    reason = browser.missing()
    if reason:
        pytest.skip(f"no browser to test the page in: {reason}")
    _, answer = call(server, "POST", "/v1/faces", ASTRONAUT.read_bytes())
    (face,) = answer["faces"]
    screenshot = tmp_path / "page.png"
    result = run([python, "-m", "launch.browser",
                  f"--url=http://{server.host}:{server.port}/", f"--photo={ASTRONAUT}",
                  f"--screenshot={screenshot}"], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = json_lines(result.stdout)[-1]
    assert shown["status"] == "1 face in astronaut.png"
    age = f"{face['label']} ({100 * face['probability']:.0f}%)"
    assert shown["faces"][0].startswith(age) and [box["label"] for box in shown["boxes"]] == [age]
    scale = answer["width"] / shown["shown_width"]  # the page shows the photo scaled
    assert overlap([v * scale for v in shown["boxes"][0]["place"]], face["box"]) > 0.9
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def test_a_port_in_use_is_refused_before_the_model_loads(server):
    with pytest.raises(entry.UserError, match=f"cannot listen on 127.0.0.1:{server.port}: "
                                              f"address already in use"):
        server_lib.bind("127.0.0.1", server.port)


def test_sigterm_stops_the_server(server):
    server.process.send_signal(signal.SIGTERM)
    assert server.finish(timeout=60) == 0
    assert server.stdout[-1] == "stopped\n"
