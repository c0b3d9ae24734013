#!/usr/bin/env python3
"""Fetch long real English texts for perplexity runs, from Debian packages.

- `faq` (default): the Debian FAQ, from debian-faq (plain-text edition,
  /usr/share/doc/debian/FAQ/debian-faq.en.txt.gz). Written by the Debian FAQ authors (GPL-2+), not
  by us; about 40k SmolLM2 tokens (43k Gemma 3 tokens) of prose in questions and answers. The table
  of contents is dropped, so the text starts at chapter 1.
- `kjv`: the King James Bible (1611, public domain), from bible-kjv-text, decoded by the package's
  own `bible` program (bible-kjv) from the unpacked packages; about 1.0M Gemma 3 tokens, for windows
  longer than the FAQ (Gemma 3 at 64k). Book and chapter headings kept, verse numbers dropped.

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
KJV_PACKAGES = ("bible-kjv", "bible-kjv-text")
DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cache"

log = logging.getLogger("fetch_text")


def body(text: str) -> str:
    """The FAQ from its first chapter on (the title page and the table of contents dropped)."""
    start = re.search(r"^Chapter\s1\.\s", text, flags=re.MULTILINE)  # \s: the FAQ uses no-break spaces
    if start is None:
        raise SystemExit("fetch_text: the FAQ's layout changed (no line starting 'Chapter 1. ')")
    return text[start.start():]


def _download(packages, tmp: str) -> dict:
    """Unpack ``packages`` into ``tmp``; their versions by name."""
    log.info("downloading the Debian package(s) %s", " ".join(packages))
    subprocess.run(["apt-get", "download", *packages], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    versions = {}
    for name in packages:
        (deb,) = Path(tmp).glob(f"{name}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        versions[name] = deb.name.split("_")[1]
    return versions


def _faq(tmp: str) -> tuple:
    versions = _download([PACKAGE], tmp)
    text = gzip.decompress((Path(tmp) / MEMBER).read_bytes()).decode("utf-8")
    return body(text), f"{PACKAGE} {versions[PACKAGE]}"


def verses(printed: str) -> str:
    """`bible`'s pretty-printed output without the verse numbers (one verse per line)."""
    return re.sub(r"^ +\d+ ", "", printed, flags=re.MULTILINE)


def _kjv(tmp: str) -> tuple:
    versions = _download(KJV_PACKAGES, tmp)
    # -l 0: one verse per line; -p: the data file from the unpacked package, not /usr/lib
    printed = subprocess.run([f"{tmp}/usr/bin/bible", "-l", "0", "-p", f"{tmp}/usr/lib", "Gen1:1-Rev22:21"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True).stdout
    if not printed.lstrip().startswith("Genesis 1"):
        raise SystemExit("fetch_text: the bible program printed something unexpected")
    return verses(printed).lstrip(), f"{KJV_PACKAGES[1]} {versions[KJV_PACKAGES[1]]}"


TEXTS = {"faq": ("debian-faq", _faq), "kjv": ("kjv", _kjv)}


def fetch(directory: Path = DEFAULT_DIR, name: str = "faq") -> Path:
    """The text's path (``name``: faq or kjv); its source package and version are beside it in
    NAME.version."""
    stem, make = TEXTS[name]
    target = directory / f"{stem}.txt"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # /tmp, not the cache: apt's unprivileged download user must be able to write there
    with tempfile.TemporaryDirectory() as tmp:
        text, version = make(tmp)
        partial = target.with_suffix(".tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)
        (directory / f"{stem}.version").write_text(version + "\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where to keep the text")
    parser.add_argument("--text", choices=sorted(TEXTS), default="faq", help="which text (default faq)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(fetch(args.dir, args.text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
