"""Command line: onnx-compress inspect | compress | quantize | eval | report.

Every user error prints one line, `onnx-compress: error: ...`, and exits with status 2;
no traceback, no output file left behind, the input never modified.
"""
from __future__ import annotations

import logging
import shlex
import sys

from .. import progress as progress_mod
from ..errors import CompressionError
from .checks import SCHEME_NAMES
from .commands import COMMANDS
from .parser import build_parser

__all__ = ["COMMANDS", "SCHEME_NAMES", "build_parser", "main"]

log = logging.getLogger("onnx_compress")


def _command_line(argv) -> str:
    return "onnx-compress " + shlex.join(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        with progress_mod.listen(None if args.quiet else progress_mod.Bars()):
            return COMMANDS[args.command](args)
    except CompressionError as exc:
        print(f"onnx-compress: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnx-compress: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: say so briefly, full traceback with -v
        if args.verbose:
            raise
        print(f"onnx-compress: internal error: {type(exc).__name__}: {exc} (rerun with -v for details; "
              "please report it)", file=sys.stderr)
        return 1
