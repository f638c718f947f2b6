"""``rnnlab serve RUN [RUN ...]``: load the runs and serve them with uvicorn."""

from __future__ import annotations

import argparse
import sys
import warnings

from rnnlab import fast, runtime
from rnnlab.errors import RnnlabError
from rnnlab.serve.limits import Limits


def serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise RnnlabError("serving needs FastAPI and uvicorn: pip install 'rnnlab[serve]'"
                          ) from None
    from rnnlab.serve.app import create_app
    from rnnlab.serve.registry import Registry

    limits = Limits(max_body_bytes=args.max_body_bytes, max_input_tokens=args.max_input_tokens,
                    max_new_tokens=args.max_new_tokens, max_concurrent=args.max_concurrent)
    try:
        limits.check()
    except ValueError as exc:
        raise RnnlabError(str(exc)) from None
    if args.quantize == "int8":
        fast.set_enabled(False)  # the fast paths read float weights (see rnnlab.quantize)
    if args.threads is not None:
        runtime.set_threads(args.threads)
    registry = Registry.load(args.runs, device=args.device, weights=args.weights,
                             quantization=args.quantize)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(f"rnnlab: warning: serving on {args.host} without authentication: anyone who "
              "can reach this address can use the models (give --token to require one)",
              file=sys.stderr)
    # A word prompt's unknown words are read as <unk>: a client's choice, not the server's.
    warnings.filterwarnings("ignore", message="prime words not in the vocabulary")
    app = create_app(registry, limits, args.token)
    print(f"serving {', '.join(registry.names())} on http://{args.host}:{args.port}/ "
          f"(API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
