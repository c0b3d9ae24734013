"""`pyntk` command line: one module per subcommand, each with add_parser(sub) and run(args)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from .. import __version__
from ..errors import PyntkError
from ._common import fail

# Subcommand name -> module in this package; the order is the order of `pyntk --help`.
COMMANDS = {
    "info": "info",
    "freqs": "freqs",
    "gguf-set": "gguf_set",
    "gguf-reset": "gguf_set",
    "args": "args",
    "plan": "plan",
    "ppl": "ppl",
    "verify": "verify",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyntk",
        description=(
            "Extend the context of GGUF models for llama.cpp with NTK-aware scaled RoPE and its "
            "relatives (linear/PI, Dynamic NTK, NTK-by-parts, YaRN): inspect, edit, verify, measure."
        ),
        epilog="Set PYNTK_DEBUG=1 to see tracebacks. Docs and examples: README.md.",
    )
    parser.add_argument("--version", action="version", version=f"pyntk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f".{module}", __name__).add_parser(sub, name)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    except BrokenPipeError:  # `pyntk freqs ... | head`
        sys.stderr.close()
        return 0
    except (PyntkError, ValueError, OSError) as e:
        if os.environ.get("PYNTK_DEBUG"):
            raise
        return fail(str(e))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
