#!/usr/bin/env python3
"""Fetch a long real English text for perplexity runs: the Debian FAQ, from Debian's package
debian-faq (plain-text edition, /usr/share/doc/debian/FAQ/debian-faq.en.txt.gz).

Written by the Debian FAQ authors (GPL-2+), not by us; about 43k SmolLM2 tokens of prose in
questions and answers. The table of contents is dropped, so the text starts at chapter 1.
Prints the path of the text file. Idempotent: an existing copy is reused.
Needs `apt-get download` and `dpkg-deb` (Debian or Ubuntu); no root is needed.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "debian-faq"
MEMBER = "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cache"

log = logging.getLogger("fetch_text")


def body(text: str) -> str:
    """The FAQ from its first chapter on (the title page and the table of contents dropped)."""
    start = re.search(r"^Chapter\s1\.\s", text, flags=re.MULTILINE)  # \s: the FAQ uses no-break spaces
    if start is None:
        raise SystemExit("fetch_text: the FAQ's layout changed (no line starting 'Chapter 1. ')")
    return text[start.start():]


def fetch(directory: Path = DEFAULT_DIR) -> Path:
    target = directory / "debian-faq.txt"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # /tmp, not the cache: apt's unprivileged download user must be able to write there
    with tempfile.TemporaryDirectory() as tmp:
        log.info("downloading the Debian package %s", PACKAGE)
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        (deb,) = Path(tmp).glob(f"{PACKAGE}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        text = gzip.decompress((Path(tmp) / MEMBER).read_bytes()).decode("utf-8")
        version = deb.name.split("_")[1]
        partial = target.with_suffix(".tmp")
        partial.write_text(body(text), encoding="utf-8")
        partial.replace(target)
        (directory / "debian-faq.version").write_text(f"{PACKAGE} {version}\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where to keep the text")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(fetch(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
