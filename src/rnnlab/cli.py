"""The ``rnnlab`` command: parse arguments, call the library, print results.

Every user-facing failure becomes one line on stderr (``rnnlab: error: ...``) and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

from rnnlab.cli_parser import build_parser
from rnnlab.commands.manage import (
    cmd_data,
    cmd_export,
    cmd_plot,
    cmd_presets,
    cmd_runs,
    cmd_serve,
)
from rnnlab.commands.train import EXIT_INTERRUPTED, cmd_train
from rnnlab.commands.use import cmd_eval, cmd_generate, cmd_predict, cmd_score
from rnnlab.errors import RnnlabError

EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        return COMMANDS[args.command](args) or 0
    except RnnlabError as exc:
        print(f"rnnlab: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # disk full, permissions: the user's environment, not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"rnnlab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless debugging
        if os.environ.get("RNNLAB_DEBUG"):
            raise
        print(f"rnnlab: internal error: {type(exc).__name__}: {exc} "
              "(set RNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rnnlab: warning: {message}", file=sys.stderr)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "predict": cmd_predict,
    "score": cmd_score,
    "serve": cmd_serve,
    "export": cmd_export,
    "data": cmd_data,
    "plot": cmd_plot,
    "runs": cmd_runs,
    "presets": cmd_presets,
}


if __name__ == "__main__":
    sys.exit(main())
