"""The built wheel works on its own: installed outside the checkout, it decodes an event."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from bench.codec import sample_operation_completed
from pipeline.codec import encode

REPO = Path(__file__).resolve().parents[1]

# Runs in the fresh venv, from a folder outside the checkout: decodes the message on stdin.
_DECODE = """
import sys
import pipeline, schemas
from pipeline.codec import decode
event = decode(bytes.fromhex(sys.stdin.read()))
print(pipeline.__file__)
print(schemas.__file__)
print(type(event).__name__, event.cluster.id, event.seq)
"""


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True, capture_output=True)


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_decodes_an_event(tmp_path: Path) -> None:
    # Built from a copy of the sources: setuptools writes build/ and *.egg-info beside them.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "tests"),
    )
    dist = tmp_path / "dist"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist), str(source))
    (wheel,) = dist.glob("coopr_pipeline-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    _pip("--python", str(python), "install", "--no-deps", str(wheel))
    # The wheel's dependencies come from this venv: a path entry, so its editable finder of
    # the checkout (installed by a .pth file of its own) is not picked up.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    event = sample_operation_completed()
    run = subprocess.run(
        [str(python), "-c", _DECODE],
        input=encode(event).hex(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    pipeline_file, schemas_file, decoded = run.stdout.splitlines()
    assert Path(pipeline_file).is_relative_to(env_dir)
    assert Path(schemas_file).is_relative_to(env_dir)
    assert not Path(pipeline_file).is_relative_to(REPO)
    assert decoded == f"OperationCompleted {event.cluster.id} {event.seq}"
