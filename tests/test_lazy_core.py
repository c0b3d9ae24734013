"""The metadata commands (info, gguf-set, gguf-reset, args) run without the compiled core."""

import subprocess
import sys

import ggufs

# `import pyntk._core` fails in this process, as on a machine where the core did not build.
SCRIPT = """
import sys
sys.modules["pyntk._core"] = None
from pyntk.cli import main
path = sys.argv[1]
for argv in (["info", path], ["args", path, "--alpha", "4"], ["gguf-set", "--alpha", "4", "--yes", path],
             ["gguf-set", "--method", "yarn", "--factor", "2", "--yes", path], ["gguf-reset", "--yes", path]):
    code = main(argv)
    if code:
        sys.exit(f"{argv[0]} failed with {code}")
print("pyntk._core" in sys.modules and sys.modules["pyntk._core"] is None)
"""


def test_metadata_commands_run_without_the_compiled_core(tmp_path):
    path = ggufs.write_model(tmp_path / "m.gguf")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("True")
