"""A separately installed third-party plugin is discovered, listed and run like a built-in.

Creates a fresh virtual environment, makes this environment's packages visible to it through a
``.pth`` file (torch is not reinstalled), installs examples/attnbench-example-plugin with pip,
then drives the new environment's CLI in subprocesses.
"""
from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from attnbench.schema import read_all

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "attnbench-example-plugin"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    env.pop("PYTHONPATH", None)
    # a neutral working directory, so nothing is imported from the source tree by accident
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, cwd=cwd or EXAMPLE.parent)


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("example-venv")
    made = run([sys.executable, "-m", "venv", "--without-pip", venv])  # pip and setuptools come from ours
    assert made.returncode == 0, made.stderr
    python = venv_python(venv)
    new_site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    ours = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    # addsitedir (not a bare path) so the parent's own .pth files run too, e.g. an editable install's finder
    lines = [f"import site; site.addsitedir({p!r})" for p in dict.fromkeys(ours)]
    (Path(new_site) / "attnbench-parent-env.pth").write_text("\n".join(lines) + "\n")
    installed = run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", EXAMPLE])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_example_plugin_is_listed_as_available(plugin_venv: Path) -> None:
    listed = run([venv_python(plugin_venv), "-m", "attnbench.cli", "list"])
    assert listed.returncode == 0, listed.stderr
    line = next((ln for ln in listed.stdout.splitlines() if "example-mean" in ln), None)
    assert line is not None, listed.stdout
    assert "unavailable" not in line and "available" in line, line
    # it is not visible from the environment running this test: discovery is by installation only
    from attnbench.registry import plugins

    assert "example-mean" not in plugins()


def test_example_plugin_runs_in_the_memory_suite(plugin_venv: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    ran = run([
        venv_python(plugin_venv), "-m", "attnbench.cli", "run", "memory", "--mechanisms", "example-mean",
        "--sizes", "16", "--mode", "fwd", "--timeout", "120", "--out", out,
    ])
    assert ran.returncode == 0, ran.stdout + ran.stderr
    records = read_all([out])
    assert len(records) == 1, records
    record = records[0]
    assert record["mechanism"] == "example-mean"
    assert record["status"] == "ok", record["reason"]
    assert record["metrics"]["peak_memory_bytes"] > 0
