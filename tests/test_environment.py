"""The environment the project is built in: torch's one pin, CI's command, and the GPU check's preparation."""

import configparser
import subprocess
import sys
import tomllib
import zipfile

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from melee_encode import open_store

from conftest import ROOT


def torch_pin() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["melee-encode"]["torch"]


def test_torch_pin_is_admitted_by_the_train_extra():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extra = [Requirement(line) for line in setup["options.extras_require"]["train"].split("\n") if line.strip()]
    (requirement,) = [r for r in extra if r.name == "torch"]
    # An open requirement would let pip replace the pinned CPU build by a multi-GB CUDA one.
    assert requirement.specifier, "setup.cfg's train extra must bound torch"
    assert Version(torch_pin()) in requirement.specifier


def test_torch_pin_is_written_once_and_installed():
    pin = torch_pin()
    for script in ("scripts/setup_env.sh", "benchmarks/gpu_check.sh", "benchmarks/prepare_gpu_check.sh"):
        assert pin not in (ROOT / script).read_text(), f"{script} repeats torch's version; read pyproject.toml"
    assert Version(torch.__version__).base_version == pin  # what scripts/setup_env.sh installed


def test_ci_runs_the_readmes_test_command():
    """.ci/run's command is the README's second set-up line, word for word."""
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()  # the README's first code block
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup[1].startswith("./run_tests.sh") and ci[-1] == setup[1]


@pytest.mark.parametrize("shell", [[], ["sh"], ["bash"]], ids=["executable", "sh", "bash"])
def test_ci_reaches_the_test_command_however_it_is_started(tmp_path, shell):
    """.ci/run from any working directory, run as a file, by dash's sh or by bash, gets to its last
    line in the repository root, and so does its text piped to a shell there: here a copy of it
    beside a run_tests.sh that says where it ran."""
    (tmp_path / ".ci").mkdir()
    ci = tmp_path / ".ci" / "run"
    ci.write_text((ROOT / ".ci" / "run").read_text())
    ci.chmod(0o755)
    marker = tmp_path / "run_tests.sh"
    marker.write_text("#!/bin/sh\npwd\n")
    marker.chmod(0o755)
    done = subprocess.run([*shell, str(ci)], cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path)
    piped = subprocess.run(["sh", "-s"], input=ci.read_text(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr  # its text fed to a shell in the root, where $0 names no file
    assert piped.stdout.strip() == str(tmp_path)


@pytest.mark.slow
def test_gpu_check_preparation(tmp_path, shared_store):
    # The real script, as gpu_check.sh's user runs it (PyPI downloads, a mamba-ssm build, an encode),
    # writing into a temporary folder instead of the repo.
    result = subprocess.run(
        ["bash", "benchmarks/prepare_gpu_check.sh", "--out", str(tmp_path), "--python", sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    wheels = {path.name.split("-")[0]: path for path in (tmp_path / ".whl").glob("*.whl")}
    assert set(wheels) == {"zarr", "numcodecs", "donfig", "google_crc32c", "msgspec", "peppi_py", "mamba_ssm"}
    for name in ("numcodecs", "google_crc32c", "msgspec"):  # compiled: must be the GPU machine's Python 3.12
        assert "-cp312-" in wheels[name].name, wheels[name].name
    with zipfile.ZipFile(wheels["mamba_ssm"]) as wheel:
        files = set(wheel.namelist())
    # A pure-Python build: the Triton kernels gpu_check.sh needs, no compiled extension.
    assert {"mamba_ssm/ops/triton/ssd_combined.py", "mamba_ssm/ops/triton/selective_state_update.py"} <= files
    assert not any(name.endswith(".so") for name in files)

    store, expected = open_store(tmp_path / ".gpu" / "store.zarr"), open_store(shared_store)
    assert len(store.games["hash"]) == len(expected.games["hash"])
    assert sorted(store.games["hash"]) == sorted(expected.games["hash"])
    assert "store.zarr" in result.stdout and ".whl" in result.stdout  # the sizes it prints
