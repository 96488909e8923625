"""File descriptors: what the connection caps leave for the rest of the process.

Every connection holds a descriptor, and so do model files, logs and gRPC's wake-ups. A
process out of descriptors cannot accept connections (libgrpc 1.51's own listener then
never accepts again, hence the native transport's own accept loop) nor open a model. At
start the soft limit is raised to the hard one, and a connection cap left at 0 becomes a
share of it, so that connections alone never take every descriptor.
"""
import logging
import resource
from pathlib import Path

log = logging.getLogger("fastserve")

# Connection caps left at 0: REST may hold half the descriptors and gRPC a quarter; the last
# quarter is for the rest of the process.
_REST_SHARE = 2
_GRPC_SHARE = 4
_SPARE = 256  # explicit caps that leave fewer descriptors than this (or than a quarter) are warned about


def raise_limit() -> int:
    """Raise the soft descriptor limit to the hard one; returns the limit the process now has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())  # the most the kernel allows one process
    except (OSError, ValueError):
        ceiling = hard
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return target if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


def connection_caps(rest: int, grpc: int, limit: int) -> tuple[int, int]:
    """The REST and gRPC connection caps: as configured, or (0) their share of the limit."""
    rest = rest or limit // _REST_SHARE
    grpc = grpc or limit // _GRPC_SHARE
    left = limit - rest - grpc
    log.info("file descriptors: %d; connections at most: REST %d, gRPC %d", limit, rest, grpc)
    if left < min(limit // 4, _SPARE):
        log.warning(
            "the connection caps (REST %d, gRPC %d) leave %d of the process's %d file descriptors for models and the "
            "server itself: connections can exhaust them (lower rest_max_connections / grpc_max_connections, or raise "
            "the limit: ulimit -n)", rest, grpc, max(left, 0), limit)
    return rest, grpc
