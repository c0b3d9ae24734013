"""Installing pyntk as README.md says, in scratch virtual environments: a wheel installed
non-editably passes the tests that depend on how pyntk is installed, and both quick-start commands
work on an "externally managed" system Python (PEP 668: Debian 12, Ubuntu 23.04 and later).

Each builds pyntk's C++ core once (about a minute on 2 cores) and takes everything else from pip's
caches (llama-cpp-python is not rebuilt), so they run where CI=true (CI) or PYNTK_TEST_INSTALL=1,
and skip elsewhere.
"""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pip
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(os.environ.get("CI") != "true" and os.environ.get("PYNTK_TEST_INSTALL") != "1",
                       reason="builds pyntk in scratch environments: set PYNTK_TEST_INSTALL=1 (CI does)"),
]

# The tests whose outcome depends on how pyntk is installed: the compiled core and its kernels,
# the console script and the CLI's modules, llama.cpp's libraries found through llama-cpp-python,
# the recorded transformers values, the real model.
WHEEL_TESTS = ["test_freqs.py", "test_freqs_transformers.py", "test_cli.py", "test_ggml_kernel.py",
               "test_gguf_file.py", "test_rotate.py::test_environment_variable_forces_a_kernel"]
# Given to README's test command instead of running the whole suite a second time.
QUICK_TESTS = ["tests/test_freqs.py", "tests/test_cli.py::test_version_and_console_script"]


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def copy_checkout(dst: Path, *names: str) -> Path:
    """The named parts of this checkout, without build outputs, and its fetched models."""
    dst.mkdir(parents=True)
    for name in names:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dst / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "build", ".venv"))
        else:
            shutil.copy2(ROOT / name, dst / name)
    (dst / ".cache").symlink_to(ROOT / ".cache")
    return dst


def environment(bin_dir: Path) -> dict:
    """This process's environment outside its virtual environment (and without the demand for
    the transformers cross-check, which CI sets for that one), with bin_dir first on PATH."""
    ours = os.path.join(sys.prefix, "bin")
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != ours]
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHON", "PYTHONPATH", "PYNTK_TEST_CROSSCHECK")}
    return {**env, "PATH": os.pathsep.join([str(bin_dir), *path])}


def test_a_wheel_passes_the_tests_in_a_clean_venv(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist",
         f"--config-settings=build-dir={tmp_path / 'build'}", ROOT])
    [wheel] = (tmp_path / "dist").glob("pyntk-*.whl")
    with zipfile.ZipFile(wheel) as z:
        packed = set(z.namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pyntk").rglob("*")
               if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts}
    assert sources - packed == set(), "pyntk's sources missing from the wheel"
    assert any(re.fullmatch(r"pyntk/_core\..*\.so", name) for name in packed)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", f"{wheel}[llama,test]"])
    # Outside the source tree, so that only the installed pyntk can be imported.
    tree = copy_checkout(tmp_path / "tree", "tests", "tools", "pyproject.toml")
    env = environment(venv / "bin")
    where = run([python, "-c", "import pyntk; print(pyntk.__file__)"], cwd=tree, env=env).stdout
    assert where.startswith(str(venv)), where
    proc = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(f"tests/{t}" for t in WHEEL_TESTS)],
               cwd=tree, env=env)
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout


def fake_system_python(root: Path) -> Path:
    """A Python install at root, sharing this one's standard library, marked externally managed
    the way Debian marks /usr/lib/python3.X, with pip but no virtual environment."""
    info = run([sys._base_executable, "-c", "import sys, sysconfig; print(sys.executable); "
                "print(sysconfig.get_path('stdlib')); print(sysconfig.get_path('include'))"]).stdout
    executable, stdlib, include = info.splitlines()
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / "python3"
    # A copy, not a link: Python finds its prefix from where its executable really is.
    shutil.copy2(os.path.realpath(executable), python)
    lib = root / "lib" / Path(stdlib).name
    lib.mkdir(parents=True)
    for entry in Path(stdlib).iterdir():
        if entry.name not in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=This Python is managed by the system: use a virtual environment.\n")
    (root / "include").mkdir()
    (root / "include" / Path(include).name).symlink_to(include)
    site = Path(run([python, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip())
    site.mkdir(parents=True, exist_ok=True)
    (site / "pip").symlink_to(pip.__path__[0])
    return python


def quick_start() -> tuple[str, str]:
    """README's two quick-start commands: the demo line and the test line."""
    section = ROOT.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in section.splitlines() if line.startswith("./tools/setup.sh")]
    [demo] = [line for line in lines if "--test" not in line]
    [test] = [line for line in lines if "--test" in line]
    return demo, test


def test_the_quick_start_works_on_an_externally_managed_python(tmp_path):
    system = fake_system_python(tmp_path / "system")
    refused = subprocess.run([system, "-m", "pip", "install", "six"], capture_output=True, text=True)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr

    checkout = copy_checkout(tmp_path / "checkout", "pyproject.toml", "CMakeLists.txt", "README.md",
                             "csrc", "pyntk", "tools", "tests")
    env = environment(system.parent)
    demo_line, test_line = quick_start()
    demo = run(["bash", "-c", demo_line], cwd=checkout, env=env)
    assert "generated:" in demo.stdout, demo.stdout
    assert f"home = {system.parent}\n" in (checkout / ".venv" / "pyvenv.cfg").read_text()

    test = run(["bash", "-c", f"{test_line} {' '.join(QUICK_TESTS)}"], cwd=checkout, env=env)
    assert "adding pyntk[plot,serve,test]" in test.stderr, test.stderr
    assert "building its C++ core" not in test.stderr, "the second command rebuilt the core"
    assert re.search(r"\d+ passed", test.stdout), test.stdout
