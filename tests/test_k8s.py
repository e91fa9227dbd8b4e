"""Kubernetes (launch/k8s/, Dockerfile), checked offline: the core manifests against the API's
schemas with `kubernetes-validate --strict`, the MPIJob against the MPI Operator's v2beta1
definition, the wiring between the objects, and every command the pods run against this
project's own entry points and flags."""

import json
import re
import shlex

import pytest
import yaml

from conftest import REPO, VENV_BIN, run
from launch import entry
from launch import indexed_job

K8S = REPO / "launch" / "k8s"
IMAGE_HOME = "/opt/agenet"  # the Dockerfile's WORKDIR

# The MPI Operator's v2beta1 MPIJob (kubeflow/mpi-operator, pkg/apis/kubeflow/v2beta1 and its
# validation): the fields it knows (its CRD prunes any other silently: a misspelt field would
# be lost without a word), and the values it accepts.
MPIJOB_SPEC_FIELDS = {"slotsPerWorker", "runLauncherAsWorker", "runPolicy", "mpiReplicaSpecs",
                      "sshAuthMountPath", "launcherCreationPolicy", "mpiImplementation"}
MPIJOB_RUN_POLICY_FIELDS = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds",
                            "backoffLimit", "schedulingPolicy", "suspend", "managedBy"}
MPIJOB_REPLICA_FIELDS = {"replicas", "template", "restartPolicy"}
MPIJOB_REPLICA_TYPES = {"Launcher", "Worker"}
MPIJOB_RESTART_POLICIES = {"Never", "OnFailure"}
MPIJOB_CLEAN_POD_POLICIES = {"None", "Running", "All"}
MPIJOB_LAUNCHER_CREATION_POLICIES = {"AtStartup", "WaitForWorkersReady"}
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def documents(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def manifests():
    return {path.name: documents(path.name) for path in sorted(K8S.glob("*.yaml"))}


def only(docs, kind):
    [found] = [d for d in docs if d["kind"] == kind]
    return found


def containers(pod_template):
    return pod_template["spec"]["containers"]


def command_of(container):
    return container.get("command", []) + container.get("args", [])


def split_at_dashes(args):
    """(the launcher's own flags, the trainer's flags after `--`)."""
    position = args.index("--")
    return args[:position], args[position + 1:]


def flag_value(args, name):
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def mpijob():
    return only(documents("horovod-mpijob.yaml"), "MPIJob")


def mpijob_templates():
    return {kind: spec["template"] for kind, spec in mpijob()["spec"]["mpiReplicaSpecs"].items()}


def test_the_core_manifests_pass_kubernetes_validate_strict(tmp_path):
    files = [K8S / name for name, docs in manifests().items()
             if all(d["apiVersion"] != "kubeflow.org/v2beta1" for d in docs)]
    # The MPIJob's pod templates are core PodTemplateSpecs: validated as such.
    for kind, template in mpijob_templates().items():
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"mpijob-{kind.lower()}"}, "template": template}
        files.append(tmp_path / f"mpijob-{kind.lower()}.yaml")
        files[-1].write_text(yaml.safe_dump(wrapper))
    result = run([VENV_BIN / "kubernetes-validate", "--strict", *files])
    assert result.returncode == 0, result.stdout + result.stderr
    resources = sum(len(documents(f.name)) for f in files if f.parent == K8S) + 2
    assert result.stdout.count(" passed for resource ") == resources, result.stdout
    assert "WARN" not in result.stdout + result.stderr


def test_validation_would_catch_a_misspelt_field(tmp_path):
    text = (K8S / "multi-worker-job.yaml").read_text()
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(text.replace("publishNotReadyAddresses", "publishNotReadyAdresses"))
    result = run([VENV_BIN / "kubernetes-validate", "--strict", misspelt])
    assert result.returncode != 0 and "publishNotReadyAdresses" in result.stdout


def test_the_indexed_job_and_its_headless_service_fit_together():
    docs = documents("multi-worker-job.yaml")
    service, job = only(docs, "Service"), only(docs, "Job")
    pod = job["spec"]["template"]
    [worker] = containers(pod)
    own_flags, _ = split_at_dashes(command_of(worker))
    # kubernetes-validate passes a misspelt enum value (completionMode: Indexd): checked here.
    assert job["spec"]["completionMode"] == "Indexed"
    workers = int(flag_value(own_flags, "workers"))
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] == flag_value(own_flags,
                                                                                 "service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port = int(flag_value(own_flags, "port"))
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    assert [p["containerPort"] for p in worker["ports"]] == [port]


def test_every_pod_mounts_the_shared_claim_where_the_trainer_reads_and_writes():
    [claim] = documents("storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every worker restores
    job = only(documents("multi-worker-job.yaml"), "Job")
    pods = [job["spec"]["template"], mpijob_templates()["Worker"]]
    trainer_flags = [split_at_dashes(command_of(containers(job["spec"]["template"])[0]))[1],
                     command_of(containers(mpijob_templates()["Launcher"])[0])]
    for pod, flags in zip(pods, trainer_flags):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = [m["mountPath"] for m in containers(pod)[0]["volumeMounts"]
                  if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
                  == claim["metadata"]["name"]]
        for name in ("records", "model_dir"):
            assert any(flag_value(flags, name).startswith(m + "/") for m in mounts), name


def test_the_mpijob_has_what_the_operators_v2beta1_definition_requires():
    job = mpijob()
    spec = job["spec"]
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    assert set(spec) <= MPIJOB_SPEC_FIELDS
    assert set(spec["runPolicy"]) <= MPIJOB_RUN_POLICY_FIELDS
    assert spec["runPolicy"]["cleanPodPolicy"] in MPIJOB_CLEAN_POD_POLICIES
    replicas = spec["mpiReplicaSpecs"]
    assert set(replicas) == MPIJOB_REPLICA_TYPES
    for replica in replicas.values():
        assert set(replica) <= MPIJOB_REPLICA_FIELDS
        assert replica["restartPolicy"] in MPIJOB_RESTART_POLICIES
        assert isinstance(replica["replicas"], int) and containers(replica["template"])
    assert replicas["Launcher"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    # The operator names the pods <name>-worker-<i>: each must be a DNS label.
    last_worker = f"{job['metadata']['name']}-worker-{replicas['Worker']['replicas'] - 1}"
    assert DNS_1035_LABEL.fullmatch(last_worker) and len(last_worker) <= 63
    assert isinstance(spec["slotsPerWorker"], int) and spec["slotsPerWorker"] >= 1


def test_the_mpijob_launches_horovod_once_the_workers_sshd_answers():
    spec = mpijob()["spec"]
    # OpenMPI: the operator's hostfile lines are "host slots=N" (Intel, MPICH: "host:N").
    assert spec["mpiImplementation"] == "OpenMPI"
    assert spec["launcherCreationPolicy"] in MPIJOB_LAUNCHER_CREATION_POLICIES
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    [worker] = containers(mpijob_templates()["Worker"])
    assert command_of(worker)[0] == "/usr/sbin/sshd"
    assert worker["readinessProbe"]["tcpSocket"]["port"] == 22
    # One Horovod process per slot, one slot per GPU.
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == spec["slotsPerWorker"]


def test_the_dockerfile_is_the_readmes_setup_with_what_the_pods_run():
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert base.startswith("python:3.11")
    assert re.search(r"^RUN bash launch/setup\.sh\b", text, re.M)
    assert re.search(r"^ENV .*\bTF_FLAVOUR=cuda\b", text, re.M)  # no nvidia-smi in a build
    assert re.search(rf"^WORKDIR {IMAGE_HOME}$", text, re.M)
    assert re.search(rf"^ENV PATH={IMAGE_HOME}/\.venv/bin:\$PATH", text, re.M)
    assert "openssh-server" in text and "openssh-client" in text  # the MPIJob's sshd and ssh
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), source
    images = {c["image"] for docs in manifests().values() for d in docs
              for c in _pod_containers(d)}
    assert len(images) == 1  # one image, named once per container: the README says to change it


def _pod_containers(document):
    if document["kind"] == "Job":
        return containers(document["spec"]["template"])
    if document["kind"] == "MPIJob":
        return [c for replica in document["spec"]["mpiReplicaSpecs"].values()
                for c in containers(replica["template"])]
    return []


# Parses argument lists with an entry point's absl flags, as it would at start, without
# running it: an unknown flag or a bad value fails.
PARSE_FLAGS = """
import importlib, json, sys
from absl import flags
importlib.import_module(sys.argv[1])
for args in json.loads(sys.argv[2]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS([sys.argv[1], *args])
print("parsed")
"""


def test_every_command_the_pods_run_is_this_projects(python, tmp_path):
    commands = [command_of(c) for docs in manifests().values() for d in docs
                for c in _pod_containers(d)]
    assert len(commands) == 3
    trainer_flags = []
    for command in commands:
        if command[0] == "/usr/sbin/sshd":
            continue  # installed by the Dockerfile (openssh-server)
        if command[:2] == ["python", "-m"]:
            module, args = command[2], command[3:]
            assert (REPO / (module.replace(".", "/") + ".py")).exists(), module
            own, trainer = split_at_dashes(args)
            result = run([python, "-c", PARSE_FLAGS, module, json.dumps([own])])
            assert result.returncode == 0, result.stderr[-3000:]
            trainer_flags.append(trainer)
        else:
            assert command[:2] == ["bash", "launch/multi_node.sh"], command
            trainer_flags.append(_launched_trainer_flags(command[2:], tmp_path))
    result = run([python, "-c", PARSE_FLAGS, "trainer.main", json.dumps(trainer_flags)])
    assert result.returncode == 0, result.stderr[-3000:]


def _launched_trainer_flags(args, tmp_path):
    """The launcher's command on the hostfile the operator writes; the trainer's flags in it."""
    spec = mpijob()["spec"]
    workers = spec["mpiReplicaSpecs"]["Worker"]["replicas"]
    name = mpijob()["metadata"]["name"]
    hosts = [f"{name}-worker-{i}.{name}.default.svc" for i in range(workers)]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h} slots={spec['slotsPerWorker']}\n" for h in hosts))
    assert "--hostfile=/etc/mpi/hostfile" in args
    args = [f"--hostfile={hostfile}" if a.startswith("--hostfile=") else a for a in args]
    result = run(["bash", "launch/multi_node.sh", *args, "--dry_run"])
    assert result.returncode == 0, result.stderr[-3000:]
    slots = ",".join(f"{h}:{spec['slotsPerWorker']}" for h in hosts)
    assert f" -np {workers * spec['slotsPerWorker']} -H {slots} --gloo " in result.stdout
    command = shlex.split(result.stdout.strip().lstrip("+ "))
    return command[command.index("trainer.main") + 1:]


def test_a_pods_tf_config_names_every_worker_by_its_stable_name():
    config = indexed_job.tf_config("agenet-multi-worker-1", 1, workers=3,
                                   service="agenet-workers", port=2222)
    assert config == {"cluster": {"worker": [f"agenet-multi-worker-{i}.agenet-workers:2222"
                                             for i in range(3)]},
                      "task": {"type": "worker", "index": 1}}
    with pytest.raises(entry.UserError, match="not below --workers=2"):
        indexed_job.tf_config("agenet-multi-worker-2", 2, workers=2, service="s", port=2222)
    with pytest.raises(entry.UserError, match="completionMode: Indexed"):
        indexed_job.tf_config("some-pod", 0, workers=2, service="s", port=2222)


def test_a_pod_outside_an_indexed_job_is_one_error_line(python):
    result = run([python, "-m", "launch.indexed_job", "--workers=2", "--service=s", "--",
                  "--model_dir=m"], env={"JOB_COMPLETION_INDEX": ""})
    assert result.returncode == entry.USAGE_EXIT_CODE
    assert result.stderr.splitlines() == ["error: JOB_COMPLETION_INDEX is not set: run this in a "
                                          "pod of a Job with completionMode: Indexed"]
