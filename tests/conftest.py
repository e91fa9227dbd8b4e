"""Shared helpers: run the project's entry points as subprocesses, as a user would."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent


def _environment(env):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="1")
    full_env.pop("TF_CONFIG", None)
    full_env.update(env or {})
    return full_env


def run(args, env=None, timeout=300):
    """Runs a command from the repo root with the repo importable; returns CompletedProcess."""
    return subprocess.run([str(a) for a in args], cwd=REPO, env=_environment(env),
                          capture_output=True, text=True, timeout=timeout)


def start(args, env=None):
    """Starts a command as `run` does, without waiting (for processes that must meet)."""
    return subprocess.Popen([str(a) for a in args], cwd=REPO, env=_environment(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def json_lines(text):
    """The JSON objects printed in a command's output (horovodrun prefixes each rank's lines)."""
    found = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                found.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                pass
    return found


@pytest.fixture
def python():
    return sys.executable


@pytest.fixture
def horovodrun():
    return VENV_BIN / "horovodrun"
