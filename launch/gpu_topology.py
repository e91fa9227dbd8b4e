"""Where this host's GPUs sit: each GPU's PCI address (from nvidia-smi), the NUMA node of that
address and each node's cores (from sysfs). launch.host binds a rank to its GPU's node with it.

    nvidia-smi --query-gpu=index,uuid,pci.bus_id --format=csv,noheader
    0, GPU-5d0c..., 00000000:3B:00.0        -> /sys/bus/pci/devices/0000:3b:00.0/numa_node: 0
    /sys/devices/system/node/node0/cpulist: 0-27,56-83
    /sys/devices/system/cpu/cpu56/topology/thread_siblings_list: 0,56   (one physical core)

nvidia-smi numbers the GPUs in PCI bus order; CUDA (hence TensorFlow, and CUDA_VISIBLE_DEVICES)
numbers them the same way only with CUDA_DEVICE_ORDER=PCI_BUS_ID, which launch.host sets.
Nothing here needs TensorFlow or a GPU: tests hand these functions a folder laid out like /sys
and nvidia-smi's text.
"""

import dataclasses
import os
import subprocess

SYS = "/sys"
NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=index,uuid,pci.bus_id", "--format=csv,noheader")
NVIDIA_SMI_SECONDS = 30  # a driver that hangs must not hang every process of the job


@dataclasses.dataclass(frozen=True)
class Gpu:
    index: int  # nvidia-smi's, which CUDA_VISIBLE_DEVICES uses under CUDA_DEVICE_ORDER=PCI_BUS_ID
    uuid: str  # "GPU-...", which CUDA_VISIBLE_DEVICES may name instead
    address: str  # sysfs's form of the PCI address: "0000:3b:00.0"
    node: int | None  # its NUMA node; None where the firmware gives none (numa_node -1)

    def named_by(self, device):
        """Whether `device`, an item of CUDA_VISIBLE_DEVICES, names this GPU (an index, or a
        UUID or a unique prefix of one, as CUDA accepts)."""
        return device == str(self.index) or (device.startswith("GPU-")
                                             and self.uuid.startswith(device))


@dataclasses.dataclass(frozen=True)
class Topology:
    gpus: tuple  # of Gpu, in nvidia-smi's order
    nodes: dict  # NUMA node -> its CPU ids, for the nodes that have CPUs
    # CPU id -> its physical core (the lowest id of its hyperthreads): Linux numbers a core's
    # second threads after every first one (node 0: 0-27,56-83), so a split of the CPU ids
    # alone would give one rank the cores and the next their second threads.
    core_of: dict

    def gpu(self, device):
        """The GPU that `device` (an item of CUDA_VISIBLE_DEVICES) names; None if none."""
        return next((gpu for gpu in self.gpus if gpu.named_by(device)), None)


def read(sys_root=SYS, nvidia_smi_output=None):
    """This host's Topology: GPUs from `nvidia_smi_output` (default: nvidia-smi's own answer; no
    GPU without nvidia-smi), their nodes and the nodes' cores from `sys_root`."""
    if nvidia_smi_output is None:
        nvidia_smi_output = query_nvidia_smi()
    gpus = tuple(Gpu(index, uuid, address, numa_node(address, sys_root))
                 for index, uuid, address in parse_nvidia_smi(nvidia_smi_output))
    nodes = node_cores(sys_root)
    return Topology(gpus, nodes, physical_cores(sum(nodes.values(), []), sys_root))


def query_nvidia_smi():
    """nvidia-smi's index, UUID and PCI bus id of every GPU, as text; "" without nvidia-smi."""
    try:
        answer = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True,
                                timeout=NVIDIA_SMI_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return answer.stdout if answer.returncode == 0 else ""


def parse_nvidia_smi(text):
    """[(index, uuid, sysfs address)] from the query's CSV lines; other lines are skipped."""
    gpus = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 3 and fields[0].isdigit():
            gpus.append((int(fields[0]), fields[1], sysfs_address(fields[2])))
    return gpus


def sysfs_address(bus_id):
    """sysfs's name of a PCI device from nvidia-smi's bus id: "00000000:3B:00.0" is
    "0000:3b:00.0" (the domain in at least 4 lower-case hex digits, as the kernel prints it)."""
    domain, bus, device_function = bus_id.strip().lower().split(":")
    return f"{int(domain, 16):04x}:{bus}:{device_function}"


def numa_node(address, sys_root=SYS):
    """The NUMA node of the PCI device at `address`; None if sysfs says -1 or has no file."""
    path = os.path.join(sys_root, "bus", "pci", "devices", address, "numa_node")
    try:
        with open(path) as file:
            node = int(file.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def node_cores(sys_root=SYS):
    """{node: its CPU ids} for every NUMA node with CPUs (a node of GPU memory alone has none)."""
    folder = os.path.join(sys_root, "devices", "system", "node")
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    nodes = {}
    for name in names:
        if name.startswith("node") and name[4:].isdigit():
            with open(os.path.join(folder, name, "cpulist")) as file:
                cores = parse_cpulist(file.read())
            if cores:
                nodes[int(name[4:])] = cores
    return dict(sorted(nodes.items()))


def physical_cores(cpus, sys_root=SYS):
    """{cpu: the lowest CPU id of its physical core} for `cpus`; a CPU whose hyperthreads sysfs
    does not list is a core of its own."""
    cores = {}
    for cpu in cpus:
        path = os.path.join(sys_root, "devices", "system", "cpu", f"cpu{cpu}", "topology",
                            "thread_siblings_list")
        try:
            with open(path) as file:
                cores[cpu] = min(parse_cpulist(file.read()), default=cpu)
        except (OSError, ValueError):
            cores[cpu] = cpu
    return cores


def parse_cpulist(text):
    """[0, 1, 2, 5] from the kernel's "0-2,5" (an empty list from an empty line)."""
    cores = []
    for item in text.strip().split(","):
        if item:
            first, _, last = item.partition("-")
            cores.extend(range(int(first), int(last or first) + 1))
    return cores


def format_cpulist(cores):
    """The kernel's "0-2,5" for [0, 1, 2, 5]: CPU ids as short as a log line needs them."""
    ranges = []
    for core in sorted(cores):
        if ranges and core == ranges[-1][1] + 1:
            ranges[-1][1] = core
        else:
            ranges.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
