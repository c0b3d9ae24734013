"""Pieces every subcommand shares: output, errors, scaling options, progress, confirmation."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from ..errors import PyntkError
from ..scaling import METHODS, USES, RopeScaling, method_help, needs_context


def log(message: str) -> None:
    print(message, file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def check_plot(path: str) -> None:
    """Refuse a --plot that would fail only after the work is done."""
    if os.path.isdir(path):
        raise PyntkError(f"--plot {path}: is a folder; give a file name such as {os.path.join(path, 'plot.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PyntkError(f"--plot {path}: there is no folder {folder}; create it or choose another path")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PyntkError("--plot needs matplotlib: pip install 'pyntk[plot]'") from None


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable JSON on stdout (no progress bars)")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def scale_parameter(text: str) -> float:
    """--alpha and --factor: one rule for every bad number (0, 0.5, -1, nan, inf), checked by argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1 (1 means no scaling), got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def add_command(sub, name: str, run, help: str, description: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


METHODS_EPILOG = "methods:\n" + method_help()


def add_scaling_options(parser: argparse.ArgumentParser) -> None:
    """--method/--alpha/--factor and the YaRN knobs, shared by every subcommand."""
    g = parser.add_argument_group("scaling (see the methods below)")
    g.add_argument("--method", choices=list(METHODS), metavar="METHOD",
                   help="scaling method; ntk when only --alpha is given; --factor needs it")
    g.add_argument("--alpha", type=scale_parameter,
                   help="static NTK alpha (>= 1): the base becomes base*alpha^(d/(d-2)); "
                        "alpha is NOT the context multiplier, the usable context is shorter")
    g.add_argument("--factor", type=scale_parameter,
                   help="scale factor s = target context / training context (>= 1), with --method")
    g.add_argument("--beta-fast", type=positive_float,
                   help="yarn/ntk-by-parts: pairs turning more than this many times over the "
                        "training context are kept (default 32)")
    g.add_argument("--beta-slow", type=positive_float,
                   help="yarn/ntk-by-parts: pairs turning fewer times are fully interpolated (default 1)")
    g.add_argument("--attn-factor", type=positive_float,
                   help="yarn: extra multiplier on the temperature 0.1*ln(s)+1 (default 1)")


# The RopeScaling parameters add_scaling_options offers, each as --name-with-dashes.
SCALING_OPTIONS = ("alpha", "factor", "beta_fast", "beta_slow", "attn_factor")
_PARAMETER = re.compile(r"(?<![\w.-])(" + "|".join(SCALING_OPTIONS) + r")\b")


@contextmanager
def options_named() -> Iterator[None]:
    """RopeScaling and the llama.cpp contract speak of parameters (beta_fast); the user typed
    options (--beta-fast): a ValueError inside says the options."""
    try:
        yield
    except ValueError as e:
        text = _PARAMETER.sub(lambda m: "--" + m.group(1).replace("_", "-"), str(e))
        raise ValueError(text) from None


def scaling_from_args(args: argparse.Namespace, *, base: float, dims: int,
                      original_context: Optional[int]) -> RopeScaling:
    """The RopeScaling the options describe; a ValueError names any option that does not fit."""
    method = args.method
    if method is None and args.factor is not None:
        from ..target import factor_needs_method
        raise ValueError(factor_needs_method([m for m in METHODS if "factor" in USES[m]]))
    if method is None:
        method = "ntk" if args.alpha is not None else "none"
    if "alpha" in USES[method] and args.alpha is None:
        raise ValueError(f"--method {method} needs --alpha (e.g. --alpha 4)")
    if "factor" in USES[method] and args.factor is None:
        raise ValueError(f"--method {method} needs --factor (target context / training context)")
    kw: dict = dict(method=method, base=base, dims=dims)
    if needs_context(method):
        if original_context is None:
            raise ValueError(f"--method {method} needs the training context (--ctx)")
        kw["original_context"] = original_context
    for option in SCALING_OPTIONS:
        if getattr(args, option) is not None:
            kw[option] = getattr(args, option)
    with options_named():
        return RopeScaling(**kw)
