"""The package as a user installs it: a wheel built from this tree, installed into a fresh virtualenv, runs
``genbench run experiment=smoke`` from an empty folder, with its configs read from inside the package.

The fresh virtualenv takes genbench's dependencies (torch and the rest, gigabytes) from the test
environment through a ``.pth`` path entry instead of downloading them again; genbench itself comes only from
the wheel (``--no-deps --no-index``), and the test checks that every genbench module and config it loads lies
inside the new virtualenv.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _run(*cmd, cwd, env=None, timeout=900):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT, cwd=dist)
    wheels = list(dist.glob("genbench-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_ships_every_config_and_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"benchmark/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("benchmark/**/__init__.py")} | {"measures"}
    assert {f"{p}/__init__.py" for p in packages} <= names
    assert not any(n.startswith(("tests/", "leaderboard/")) for n in names)


def test_installed_wheel_runs_the_smoke_experiment_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp_path).stdout.strip())
    (site / "genbench_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run(python, "-c", "import benchmark, measures, benchmark.config as c; "
                 "print(benchmark.__file__); print(measures.__file__); print(c.conf_dir())", cwd=work, env=env)
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(venv.resolve()), (line, "is not from the wheel")

    out = _run(venv / "bin" / "genbench", "run", "experiment=smoke", "run.progress=false", cwd=work, env=env)
    assert "Leaderboard smoke-digits" in out.stdout
    assert (work / "runs" / "smoke" / "genbench.sqlite").exists()
    assert (work / "runs" / "smoke" / "leaderboard" / "smoke-digits.md").exists()
    assert (work / "runs" / "smoke" / "leaderboard" / "index.html").exists()
    assert "page: runs/smoke/leaderboard/index.html" in out.stdout + out.stderr  # the log ends with where
