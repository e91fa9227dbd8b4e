"""TF Serving's REST predict API: its JSON in, tensors for a signature; outputs, its JSON out.

A client written for TF Serving works unchanged against trainer.serve, and the other way round:

  row:       {"signature_name": "...", "instances": [<instance>, ...]}
             -> {"predictions": [{"probabilities": [...], "class_id": 3, "label": "25-32"}, ...]}
  columnar:  {"signature_name": "...", "inputs": <value> | {"<input>": <value>, ...}}
             -> {"outputs": {"probabilities": [[...]], "class_id": [...], "label": [...]}}

An instance is the value of the signature's only input (`{"b64": "..."}` for bytes, nested
lists for pixels) or an object naming its inputs (`{"image_bytes": {"b64": "..."}}`). Binary
values travel as `{"b64": "..."}` (a plain JSON string is taken as its UTF-8 bytes); a string
output is written as `{"b64": ...}` only when its name ends in `_bytes`, so `label` stays a
string. With one output, TF Serving writes its values bare rather than in an object; so does
this module. Every mistake is a RequestError whose message becomes {"error": "..."}.
"""

import base64
import binascii

import numpy as np
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"
B64 = "b64"
BYTES_SUFFIX = "_bytes"


class RequestError(ValueError):
    """A request this API cannot answer; `status` is the HTTP status to answer with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def parse(request, signatures, max_instances):
    """(signature name, {input name: numpy array}, whether the request is row-format) of a
    decoded JSON request, checked against the signature's inputs.

    Args:
      request: the request body as json.loads returned it.
      signatures: {name: concrete function} of the SavedModel.
      max_instances: the most instances (the first dimension) one request may hold.
    """
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object with \"instances\" or \"inputs\"")
    name = request.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str) or name not in signatures:
        raise RequestError(f"Serving signature name: \"{name}\" not found in signature def "
                           f"(signatures: {', '.join(sorted(signatures))})")
    specs = signatures[name].structured_input_signature[1]
    given = [key for key in ("instances", "inputs") if key in request]
    if len(given) != 1:
        raise RequestError("the request must hold exactly one of \"instances\" (row format) "
                           "or \"inputs\" (columnar format)")
    row = given[0] == "instances"
    named = _rows_to_columns(request["instances"], specs) if row else _named(
        request["inputs"], specs)
    tensors = {key: to_array(value, specs[key], key) for key, value in named.items()}
    counts = {len(array) for array in tensors.values()}
    if len(counts) != 1:
        raise RequestError(f"the inputs hold different numbers of instances: {sorted(counts)}")
    if counts.pop() > max_instances:
        raise RequestError(f"more than {max_instances} instances in one request: send them in "
                           f"several requests", status=413)
    return name, tensors, row


def _is_b64(value):
    return isinstance(value, dict) and set(value) == {B64}


def _named(value, specs):
    """{input name: value} of a columnar `inputs` or of one instance: an object naming the
    inputs, or the bare value of the only input."""
    if isinstance(value, dict) and not _is_b64(value):
        unknown, missing = set(value) - set(specs), set(specs) - set(value)
        if unknown or missing:
            raise RequestError(f"the signature's inputs are {sorted(specs)}; the request "
                               f"names {sorted(value)}")
        return value
    if len(specs) != 1:
        raise RequestError(f"the signature has several inputs {sorted(specs)}: name them")
    return {next(iter(specs)): value}


def _rows_to_columns(instances, specs):
    """{input name: [its value in each instance]} of a row-format `instances` list."""
    if not isinstance(instances, list) or not instances:
        raise RequestError("\"instances\" must be a non-empty list")
    rows = [_named(instance, specs) for instance in instances]
    return {key: [row[key] for row in rows] for key in specs}


def to_array(value, spec, name):
    """A numpy array of the JSON `value` for an input of `spec`, the first dimension the batch."""
    if spec.dtype == tf.string:
        array = np.array(_bytes_of(value), dtype=object)
        if not all(isinstance(leaf, bytes) for leaf in array.flat):  # lists of unequal lengths
            raise RequestError(f"input {name}: expected nested lists of strings of one shape")
    else:
        array = np.array(value)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise RequestError(f"input {name}: expected nested lists of numbers of one shape")
        array = _cast(array, spec.dtype.as_numpy_dtype, name)
    if array.ndim == 0 or not tf.TensorShape(array.shape).is_compatible_with(spec.shape):
        shape = [-1 if size is None else size for size in spec.shape]
        raise RequestError(f"input {name} must have shape {shape} (the first dimension the "
                           f"instances), got {list(array.shape)}")
    return array


def _bytes_of(value):
    """The bytes of each string leaf of a JSON value: {"b64": ...} decoded, str as UTF-8."""
    if _is_b64(value):
        try:
            return base64.b64decode(value[B64], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise RequestError("a \"b64\" value is not valid base64") from None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_bytes_of(item) for item in value]
    raise RequestError(f"expected a string or {{\"b64\": ...}} for a string input, got "
                       f"{type(value).__name__}")


def _cast(array, dtype, name):
    if np.issubdtype(dtype, np.integer):
        if array.dtype.kind == "f":
            raise RequestError(f"input {name} takes integers ({np.dtype(dtype).name})")
        limits = np.iinfo(dtype)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise RequestError(f"input {name} takes {np.dtype(dtype).name} values "
                               f"({limits.min}..{limits.max})")
    return array.astype(dtype)


def response(outputs, row):
    """The JSON object of a signature's outputs ({name: tensor}), in the request's format."""
    values = {name: _json_values(name, tensor.numpy()) for name, tensor in outputs.items()}
    if not row:
        return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
    count = len(next(iter(values.values())))
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: value[i] for name, value in values.items()}
                            for i in range(count)]}


def _json_values(name, array):
    """Nested lists of plain JSON values; strings as text, or as {"b64": ...} for `*_bytes`."""
    if array.dtype != object:
        return array.tolist()
    if name.endswith(BYTES_SUFFIX):
        encode = lambda data: {B64: base64.b64encode(data).decode("ascii")}  # noqa: E731
    else:
        encode = lambda data: data.decode("utf-8", errors="replace")  # noqa: E731
    return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else []
