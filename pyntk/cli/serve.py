"""`pyntk serve MODEL`: an OpenAI-compatible HTTP server with dynamic RoPE scaling per request."""

from __future__ import annotations

import logging
import os
import sys

from ..errors import PyntkError
from ..plan import recommend
from ..scaling import METHODS
from ._common import add_command, positive_int


def add_parser(sub, name: str) -> None:
    p = add_command(
        sub, name, run, help="serve the model over an OpenAI-compatible HTTP API, scaled per request",
        description="Serve a GGUF model over HTTP (/v1/completions, /v1/chat/completions with the "
        "model's chat template, streaming by server-sent events, /v1/models, /health) through "
        "llama.cpp, with dynamic RoPE scaling: every request (prompt + max_tokens) runs in a "
        "context set up for its own length, unscaled within the training context and, beyond it, "
        "with --dynamic METHOD set up for the request's length rounded up to 256 tokens. Short "
        "requests cost nothing; long ones get the scaling made for them.\n\n"
        "Memory: each context keeps its own KV cache and compute buffers (without --flash-attn "
        "these grow with the context too: attention scores of every head for a 512-token batch); "
        "at most --contexts exist (and run at once), each at most the size for --max-context. The "
        "server refuses to start when that could exceed the memory available. Ctrl-C stops it.\n\n"
        "example: pyntk serve model.gguf --max-context 32768 --dynamic yarn --port 8080\n"
        "         curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' "
        "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 64}'",
    )
    p.add_argument("model", help="path of a .gguf file")
    p.add_argument("--max-context", type=positive_int, metavar="N",
                   help="longest request, prompt plus max_tokens (default: twice the training "
                        "context); longer ones get HTTP 400")
    p.add_argument("--dynamic", choices=list(METHODS), metavar="METHOD",
                   help="scaling applied beyond the training context, set up for each request's "
                        "length (default: what `pyntk plan MODEL --ctx MAX_CONTEXT` recommends)")
    p.add_argument("--contexts", type=positive_int, default=2, metavar="K",
                   help="contexts (each a KV cache and compute buffers) kept, and requests run at "
                        "once (default 2); more wait")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--name", help="model id in the API (default: the file name without .gguf)")
    p.add_argument("--threads", type=positive_int, help="CPU threads per request (default: all)")
    p.add_argument("--flash-attn", action="store_true",
                   help="llama.cpp's flash attention: compute buffers that do not grow with the "
                        "context (much less memory for long contexts)")
    p.add_argument("--original-context", type=positive_int, metavar="N",
                   help="treat the model as trained on N tokens instead of the file's value "
                        "(for experiments: makes scaling start at N)")


def run(args) -> int:
    from ..dynamic import Dynamic
    from ..llama import Model

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s pyntk serve: %(message)s",
                        datefmt="%H:%M:%S")
    if not 0 <= args.port < 65536:
        raise PyntkError(f"--port {args.port} is not a port number; give 1-65535 (0: any free port)")
    from ..serve import serve  # after the argument checks: needs the [serve] extra

    info = Model(args.model, threads=args.threads).info
    L0 = args.original_context or info.original_context
    max_context = args.max_context or 2 * L0
    method = args.dynamic or recommend(max_context, dims=info.dims, base=info.base,
                                       training_context=L0).scaling.method
    dyn = Dynamic(args.model, method, max_context, original_context=L0, cached=args.contexts,
                  threads=args.threads, flash_attn=args.flash_attn)
    name = args.name or os.path.basename(args.model).removesuffix(".gguf")
    serve(dyn, name=name, host=args.host, port=args.port)
    return 0
