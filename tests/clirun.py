"""``run``: pyntk's command line in a new process, as a user runs it; ``THREADS`` for llama.cpp."""

import subprocess
import sys

# One thread: on a busy machine two threads spin at their barriers and run several times slower.
THREADS = 1


def run(*args, check=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "pyntk.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc
