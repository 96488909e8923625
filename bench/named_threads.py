"""Runs fastserve with each Python thread's name as its OS thread name, so that
/proc/PID/task/TID/comm tells the threads apart (bench/thread_cpu.py splits the server's CPU
time by them). Python 3.11 names no thread: every one shows the process's name.

    python bench/named_threads.py ARGS     # as python -m fastserve ARGS

Names are cut to 15 bytes (the kernel's limit): fastserve-batch-mlp-0 shows as fastserve-batch.
bench/triton_peer_server.py names PyTriton's threads with name_python_threads() too.
"""
import ctypes
import os
import runpy
import sys
import threading

PR_SET_NAME = 15
_libc = ctypes.CDLL(None)
_bootstrap_inner = threading.Thread._bootstrap_inner


def _named_bootstrap_inner(self) -> None:
    _libc.prctl(PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
    _bootstrap_inner(self)


def name_python_threads() -> None:
    """Every Python thread started from now on takes its name as its OS name."""
    threading.Thread._bootstrap_inner = _named_bootstrap_inner


if __name__ == "__main__":
    name_python_threads()
    sys.argv[0] = "fastserve"
    sys.path[0] = os.getcwd()  # as python -m: not bench/
    runpy.run_module("fastserve", run_name="__main__", alter_sys=True)
