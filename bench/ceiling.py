"""The native gRPC transport's own ceiling: every call answered from C++ with one fixed reply,
no Python and no TensorFlow on the request path (the transport's bench-only fixed_reply mode).

    python bench/ceiling.py REPLY_FILE

REPLY_FILE holds the serialized response message (bench/run.py writes the one fastserve answered
to the same request, so the bytes on the wire are the same). It listens on 127.0.0.1, prints
"ceiling ready PORT" and serves until SIGTERM or SIGINT.
"""
import signal
import sys
from pathlib import Path

from fastserve._native.grpc_transport import Transport


def main() -> None:
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before the transport's threads start: they inherit it
    transport = Transport(["127.0.0.1:0"], 64 << 20, 64 << 20, fixed_reply=Path(sys.argv[1]).read_bytes())
    (port,) = transport.start()
    print(f"ceiling ready {port}", flush=True)
    signal.sigwait(stop)
    transport.shutdown(0)


if __name__ == "__main__":
    main()
