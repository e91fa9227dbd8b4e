# The project's image, for Kubernetes (launch/k8s/): the README's set-up, launch/setup.sh, run
# at build time with the GPU flavour of TensorFlow (TF_FLAVOUR=cuda: there is no GPU, nor
# nvidia-smi, during `docker build`; TensorFlow runs on the CPU where it finds no GPU).
#
#   docker build -t registry.example.com/agenet:latest .
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.5.1-devel-ubuntu22.04 \
#       -t registry.example.com/agenet:latest .
#
# The default base has Python 3.11 but no CUDA compiler: setup.sh then builds Horovod's CPU
# collectives (Gloo; GPU tensors go through host memory), which is enough for tf.distribute
# (launch/k8s/multi-worker-job.yaml: NCCL inside TensorFlow). A CUDA 12 -devel base has nvcc,
# and setup.sh builds Horovod with NCCL (the fast Horovod path on GPUs); Python 3.11 then comes
# from the distribution. About 10 GB (the CUDA wheels).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# git applies Horovod's patch; g++ and make build it; ssh is how horovodrun reaches the
# workers of an MPIJob (their sshd); Python 3.11 with headers and venv if the base has none.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bash ca-certificates g++ git make openssh-client openssh-server \
 && if ! command -v python3.11 >/dev/null; then \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-dev python3.11-venv; \
    fi \
 && rm -rf /var/lib/apt/lists/*

# The MPI Operator mounts its ssh keys read-only from a Secret: sshd must not insist on its own
# file modes (StrictModes), and the client can neither record the workers' host keys nor know
# them beforehand.
RUN mkdir -p /run/sshd \
 && printf 'StrictModes no\n' > /etc/ssh/sshd_config.d/agenet.conf \
 && printf 'Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n' \
      > /etc/ssh/ssh_config.d/agenet.conf

WORKDIR /opt/agenet
ENV TF_FLAVOUR=cuda PYTHON=python3.11 AGENET_CACHE=/tmp/agenet-cache
# The set-up before the code: a change to the trainer does not download TensorFlow again.
COPY requirements.txt ./
COPY launch/ launch/
RUN bash launch/setup.sh && rm -rf /tmp/agenet-cache /root/.cache
COPY . .
ENV PATH=/opt/agenet/.venv/bin:$PATH PYTHONPATH=/opt/agenet
