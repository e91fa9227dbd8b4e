"""The steps of trainer.bench.gpu_check, each run in processes of its own with a time limit,
and the verdict table they make. A step returns a plain dict: one JSON line of the check."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from launch import host
from launch import launcher

FAST_PRECISION = "mixed_float16"  # what a GPU trains in; the CPU cells stay in fp32
SHORT_PRECISION = {"fp32": "fp32", "mixed_float16": "fp16", "mixed_bfloat16": "bf16"}
# Runs in a process of its own: listing GPUs initialises CUDA, which this process never does.
LIST_DEVICES = """
import json, os
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
print(json.dumps({
    "gpus": [{"name": d.get("device_name", g.name),
              "compute_capability": ".".join(map(str, d.get("compute_capability", ())))}
             for g, d in zip(gpus, details)],
    "tensorflow": tf.__version__, "cuda": tf.sysconfig.get_build_info().get("cuda_version"),
    "cores": len(os.sched_getaffinity(0))}))
"""


class Steps:
    """Runs the steps; `cpu` hides every GPU from them, so the CPU sequence stays the CPU's."""

    def __init__(self, cpu, timeout_seconds):
        self.cpu = cpu
        self.timeout_seconds = timeout_seconds
        if cpu:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by every step's processes

    def devices(self, nvidia_smi_gpus):
        (code, out, err), seconds = self._run([sys.executable, "-c", LIST_DEVICES])
        found = _json_lines(out)
        if code or not found:
            return {"gpus": [], "nvidia_smi_gpus": nvidia_smi_gpus, "seconds": seconds,
                    "error": _last_line(err)}
        return {**found[-1], "nvidia_smi_gpus": nvidia_smi_gpus, "seconds": seconds,
                "error": None}

    def distcheck_mirrored(self, count, flags):
        extra = [f"--logical_cpus={count}"] if self.cpu else []
        return self._distcheck(f"mirrored, {_devices(count, self.cpu)} in one process", [
            (_distcheck_command("mirrored", *extra, *flags), {})])

    def distcheck_horovod(self, count, flags, collectives):
        command = [launcher.horovodrun(), "--gloo", "-np", str(count), "-H",
                   f"localhost:{count}", *_distcheck_command("horovod", *flags)]
        return {**self._distcheck(f"Horovod, {count} ranks", [(command, {})]),
                "collectives": collectives}

    def distcheck_multi_worker(self, count, flags):
        name = f"multi_worker, 2 local processes of {_devices(count // 2, self.cpu)}"
        if not self.cpu and count < 2:
            return {"name": name, "agree": False, "skipped": "needs 2 GPUs", "seconds": 0}
        return self._distcheck(name, [
            (_distcheck_command("multi_worker", *flags), environment)
            for environment in worker_environments(2, count, self.cpu)])

    def records(self, out_dir, subjects, face_size, image_size, given=None):
        """Synthetic faces in Adience's layout, and their records: the pipeline's cells'
        (`given`: records that exist already, used as they are)."""
        if given:
            ok = os.path.isfile(os.path.join(given, "manifest.json"))
            return {"path": given, "ok": ok, "given": True, "seconds": 0,
                    "error": None if ok else f"--records={given}: no manifest.json there"}
        faces, records = os.path.join(out_dir, "faces"), os.path.join(out_dir, "records")
        for folder in (faces, records):  # this check's own folders, made new each run
            shutil.rmtree(folder, ignore_errors=True)
        results, seconds = self._run_all([
            ([sys.executable, "-m", "input.synthetic", f"--out={faces}",
              f"--subjects={subjects}", f"--image_size={face_size}"], {}),
        ])
        if not results[0][0]:
            more, build_seconds = self._run_all([
                ([sys.executable, "-m", "input.build", f"--adience_dir={faces}",
                  f"--out_dir={records}", f"--image_size={image_size}"], {})])
            results, seconds = results + more, seconds + build_seconds
        failed = [_last_line(err) for code, _, err in results if code]
        return {"path": records, "ok": not failed and len(results) == 2,
                "subjects": subjects, "image_size": image_size, "seconds": seconds,
                "error": failed[0] if failed else None}

    def cell(self, name, cell, steps, environment=None):
        """One benchmark cell, as trainer.benchmark measures it (trainer.bench.worker), its
        processes given `environment` too."""
        from trainer.bench import processes  # imports TensorFlow: not before exit code 4

        command = processes.worker_command("cell", {"cell": cell, **steps},
                                           cell["distribution"])
        (code, out, err), seconds = self._run(command, environment)
        for line in out.splitlines():
            measured = processes.read_result(line)
            if measured and measured.get("process", 0) == 0:
                return {"name": name, **measured, "seconds": seconds}
        return {"name": name, **cell, "seconds": seconds, "error": _last_line(err)}

    def _distcheck(self, name, commands):
        results, seconds = self._run_all(commands)
        reports = [r for _, out, _ in results for r in _json_lines(out) if "agree" in r]
        failed = [_last_line(err) for code, _, err in results if code and not reports]
        agree = bool(reports) and not failed and all(r["agree"] for r in reports)
        return {"name": name, "agree": agree, "seconds": seconds,
                "replicas": reports[0]["replicas"] if reports else None,
                "largest_difference": max((max(r["differences"].values()) for r in reports),
                                          default=None),
                "error": failed[0] if failed else None, "reports": reports}

    def _run(self, command, environment=None):
        results, seconds = self._run_all([(command, environment or {})])
        return results[0], seconds

    def _run_all(self, commands):
        """Runs (command, environment additions) pairs together; [(code, stdout, stderr)] and
        the seconds taken. Past the time limit every process is killed (a collective waiting
        for a peer that never comes would wait forever)."""
        shown = [" ".join("CODE" if "\n" in arg else arg for arg in command)
                 for command, _ in commands]
        print("+ " + " & ".join(shown), file=sys.stderr, flush=True)
        started = time.monotonic()
        # Files, not pipes: a process blocked on a full pipe would stall its peers' collective.
        outputs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in commands]
        running = [subprocess.Popen(command, env={**os.environ, **environment}, text=True,
                                    stdout=out, stderr=err)
                   for (command, environment), (out, err) in zip(commands, outputs)]
        timed_out = False
        for process in running:
            try:
                process.wait(timeout=max(1.0, self.timeout_seconds
                                         - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                timed_out = True
                for other in running:
                    other.kill()
                process.wait()
        results = []
        for process, (out, err) in zip(running, outputs):
            out.seek(0)
            err.seek(0)
            note = f"\ntimed out after {self.timeout_seconds} s" if timed_out else ""
            results.append((process.returncode, out.read(), err.read() + note))
            out.close()
            err.close()
        return results, round(time.monotonic() - started, 1)


def cells(count, models, cpu, per_replica_batch_size, crop_size, records):
    """[(name, cell)]: one change at a time from one device in the fast precision, then all
    devices; on the CPU, the cells marked for it, in fp32."""
    fast = "fp32" if cpu else FAST_PRECISION
    one = {"model": models[0], "global_batch_size": per_replica_batch_size, "precision": fast,
           "xla": False, "batch_norm": "sync", "data": "synthetic",
           "distribution": "one_device", "crop_size": crop_size, "records": records}
    every = {"global_batch_size": per_replica_batch_size * count}
    planned = [  # (changes, on the CPU too)
        ({"precision": "fp32"}, True),
        ({}, False),
        ({"precision": "mixed_bfloat16"}, False),
        ({"xla": True}, False),
        ({"data": "records"}, True),
        *[({"model": model}, False) for model in models[1:2]],
        ({**every, "distribution": f"mirrored:{count}"}, True),
        ({**every, "distribution": f"mirrored:{count}", "data": "records"}, False),
        ({**every, "distribution": f"horovod:{count}"}, False),  # its distcheck ran on the CPU
    ]
    chosen = []
    for changes, on_cpu in planned:
        cell = {**one, **changes}
        if (on_cpu or not cpu) and cell not in chosen:
            chosen.append(cell)
    return [(_cell_name(cell, models[0], cpu), cell) for cell in chosen]


def inter_op_sweep(planned, count, cores):
    """[(name, cell, environment)]: the cell of every GPU in one process (mirrored, synthetic
    data) again at other inter-op thread counts, through TF_NUM_INTEROP_THREADS (which
    launch/host.py obeys): the CPU rule's and every core (tf_cnn_benchmarks'). The planned cell
    itself runs launch/host.py's GPU rule."""
    counts = sorted({host.INTER_OP_THREADS, cores} - {host.gpu_inter_op_threads(count, cores)})
    return [(f"{name} inter-op {threads}", cell, {"TF_NUM_INTEROP_THREADS": str(threads)})
            for name, cell in planned
            if cell["distribution"] == f"mirrored:{count}" and cell["data"] == "synthetic"
            for threads in counts]


def _cell_name(cell, model, cpu):
    strategy, _, count = cell["distribution"].partition(":")
    where = (f"1 {_unit(cpu)}" if strategy == "one_device"
             else f"{_devices(int(count), cpu)} {strategy}")
    return " ".join([where, SHORT_PRECISION[cell["precision"]]]
                    + ["XLA"] * cell["xla"]
                    + [cell["data"]] * (cell["data"] != "synthetic")
                    + [cell["model"]] * (cell["model"] != model))


def verdict(devices, checks, records, cells_measured, count, cpu):
    """The table a person reads at the end."""
    lines = ["", "== verdict", _devices_line(devices, cpu),
             f"{'check: trainer.distcheck':<64} {'verdict':<9} {'largest diff':>12} "
             f"{'seconds':>7}"]
    for check in checks:
        said = "skipped" if check.get("skipped") else "AGREE" if check["agree"] else "DISAGREE"
        difference = check.get("largest_difference")
        lines.append(f"{check['name']:<64} {said:<9} "
                     f"{'-' if difference is None else f'{difference:.1e}':>12} "
                     f"{check['seconds']:>7.0f}")
        for note in ("collectives", "skipped", "error"):
            if check.get(note):
                lines.append(f"    {note}: {check[note]}")
    made = ("given" if records.get("given") else f"{records['subjects']} synthetic albums at "
            f"{records['image_size']} px, made in {records['seconds']:.0f} s")
    lines.append(f"records: {records['path']} ({made})"
                 + (f": {records['error']}" if not records["ok"] else ""))
    lines.append(f"{'benchmark cell':<34} {'images/s':>9} {'min':>8} {'max':>8} {'% roof':>7}")
    for cell in cells_measured:
        if "error" in cell:
            lines.append(f"{cell['name']:<34} error: {cell['error']}")
        else:
            lines.append(f"{cell['name']:<34} {cell['images_per_sec']:>9.1f} {cell['min']:>8.1f} "
                         f"{cell['max']:>8.1f} {100 * cell['fraction_of_roof']:>6.1f}%")
    lines += _scaling_lines(cells_measured, count, cpu)
    failed = failures(checks, records, cells_measured)
    lines.append("verdict: " + ("FAIL: " + "; ".join(failed) if failed
                                else "PASS: every check agrees, every cell measured"))
    return "\n".join(lines)


def failures(checks, records, cells_measured):
    """The names of what failed: a check that disagreed or did not run, the records, a cell."""
    return ([check["name"] for check in checks if not (check["agree"] or check.get("skipped"))]
            + ["records"] * (not records["ok"])
            + [cell["name"] for cell in cells_measured if "error" in cell])


def _scaling_lines(cells_measured, count, cpu):
    measured = [cell for cell in cells_measured if "error" not in cell]
    same = ("model", "precision", "xla", "data", "crop_size")
    lines = []
    for cell in measured:
        if cell["distribution"] == "one_device":
            continue
        single = next((one for one in measured if one["distribution"] == "one_device"
                       and all(one[key] == cell[key] for key in same)), None)
        if single:
            ratio = cell["images_per_sec"] / single["images_per_sec"]
            lines.append(f"scaling: {cell['name']} / {single['name']}: {ratio:.2f}x "
                         f"({100 * ratio / count:.0f}% of linear)"
                         + (" (--cpu: the same cores, no speed-up expected)" if cpu else ""))
    return lines


def _devices_line(devices, cpu):
    if cpu:
        return (f"devices: the CPU ({devices.get('cores', '?')} cores; --cpu), TensorFlow "
                f"{devices.get('tensorflow', '?')}")
    names = sorted({f"{gpu['name']} (compute {gpu['compute_capability']})"
                    for gpu in devices["gpus"]})
    return (f"devices: {len(devices['gpus'])} GPUs seen by TensorFlow {devices['tensorflow']} "
            f"(built with CUDA {devices['cuda']}): {', '.join(names)}; nvidia-smi lists "
            f"{devices['nvidia_smi_gpus']}")


def chart(cells_measured, path):
    """The benchmark's chart of the measured cells; the path, or why there is none."""
    if not any("error" not in cell for cell in cells_measured):
        return "none: no cell was measured"
    from trainer.bench import charts  # matplotlib: only when there is something to draw

    return charts.throughput(cells_measured, path)


def _distcheck_command(strategy, *flags):
    return [sys.executable, "-m", "trainer.distcheck", f"--strategy={strategy}", *flags]


def _unit(cpu):
    return "CPU" if cpu else "GPU"


def _devices(count, cpu):
    return f"{count} {_unit(cpu)}{'s' * (count != 1)}"


def worker_environments(workers, gpus, cpu, visible=None):
    """Each local multi_worker process's TF_CONFIG (ports free now on 127.0.0.1) and its share
    of the `gpus` through CUDA_VISIBLE_DEVICES: ids out of `visible` (default: this process's
    CUDA_VISIBLE_DEVICES, else 0..gpus-1), none under `cpu`."""
    visible = visible or os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(map(str, range(gpus)))
    ids, share = visible.split(","), gpus // workers
    addresses = [f"127.0.0.1:{port}" for port in host.free_ports(workers)]
    return [{"TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                      "task": {"type": "worker", "index": index}}),
             "CUDA_VISIBLE_DEVICES": "" if cpu else ",".join(ids[index * share:
                                                                 (index + 1) * share])}
            for index in range(workers)]


def _json_lines(text):
    """The JSON objects in a process's output (horovodrun puts its rank's tag before each)."""
    found = []
    for line in text.splitlines():
        try:
            item = json.loads(line[line.index("{"):])
        except ValueError:  # no "{", or not JSON
            continue
        if isinstance(item, dict):
            found.append(item)
    return found


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
