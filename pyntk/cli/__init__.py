"""`pyntk` command line: one module per subcommand, each with add_parser(sub) and run(args).

This module imports nothing at its top that Python has not loaded already: start-up (argparse,
every subcommand's module, gguf, numpy) happens inside main(), so a Ctrl-C at any moment of it
gives the one-line error, never a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    import argparse

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
    "serve": "serve",
}


def build_parser() -> argparse.ArgumentParser:
    import argparse
    import importlib

    from .. import __version__

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


def fail(message: str, code: int = 1) -> int:
    """One line on stderr, non-zero exit code; the message names the problem and the fix."""
    print(f"pyntk: error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt as e:  # a command that writes says in the message whether the file changed
        return fail(str(e) or "interrupted", code=130)


def _main(argv: Optional[List[str]]) -> int:
    import struct

    from ..errors import PyntkError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except BrokenPipeError:  # `pyntk freqs ... | head`
        sys.stderr.close()
        return 0
    except (PyntkError, ValueError, OSError) as e:
        if os.environ.get("PYNTK_DEBUG"):
            raise
        return fail(str(e))
    except (ArithmeticError, struct.error) as e:
        # A safety net: a number out of range should have been refused with its fix before here.
        if os.environ.get("PYNTK_DEBUG"):
            raise
        return fail(f"a number out of range ({type(e).__name__}: {e}); try smaller values, or set "
                    f"PYNTK_DEBUG=1 and report the traceback")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
