"""A server's CPU time split by thread role, from /proc: each thread's utime + stime
(/proc/PID/task/TID/stat) and name (.../comm), sampled before and after a benchmark point.

fastserve's threads are told apart by name: the main thread runs the REST event loop,
fastserve-grpc the gRPC transport's event loop, fastserve-cq the native transport's completion
queue, fastserve-batch-* the batches, fastserve-exec* the unbatched executor, tf_* TensorFlow's
pools, libgrpc's own threads their names. Python 3.11 gives its threads no OS name (they all
show the process's), so the benchmark starts fastserve through bench/named_threads.py, which
sets them; a thread that still has the process's name is then a native thread started unnamed
from the main thread: TensorFlow's Eigen pools that do the matmuls (and numpy's OpenBLAS
thread), as gdb shows, so they count as TF pools.
"""
import os
from dataclasses import dataclass
from pathlib import Path

TICK = 1 / os.sysconf("SC_CLK_TCK")
GRPC_CORE = ("grpc_", "default-executo", "resolver-execut", "event_engine", "timer_manager")  # libgrpc's own threads
ROLES = ("REST loop", "gRPC loop", "gRPC CQ", "batch threads", "exec threads", "TF pools", "gRPC core",
         "Triton core", "Triton stubs", "PyTriton Python", "other")  # the order of the table's columns


def stat_seconds(stat: str) -> float:
    """utime + stime of a /proc stat line, in seconds (the name in parentheses may hold spaces)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK  # fields 14 and 15 of proc(5)


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the thread or process has ended
        return None


@dataclass
class Sample:
    threads: dict  # (pid, tid) -> (thread name, CPU seconds)
    processes: dict  # pid -> (process name, CPU seconds, its ended threads included)


def sample(pids) -> Sample:
    threads, processes = {}, {}
    for pid in pids:
        proc = Path(f"/proc/{pid}")
        comm, stat = read(proc / "comm"), read(proc / "stat")
        if comm is None or stat is None:
            continue
        processes[pid] = (comm.strip(), stat_seconds(stat))
        for task in (proc / "task").iterdir():
            name, task_stat = read(task / "comm"), read(task / "stat")
            if name is not None and task_stat is not None:
                threads[pid, int(task.name)] = (name.strip(), stat_seconds(task_stat))
    return Sample(threads, processes)


def by_role(before: Sample, after: Sample, role) -> dict[str, float]:
    """CPU seconds spent between two samples by role(pid, tid, thread name, process name); what
    threads that ended meanwhile spent (the process's total minus its threads') counts as "other"."""
    out = dict.fromkeys(ROLES, 0.0)
    unaccounted = {pid: total - before.processes.get(pid, ("", 0.0))[1] for pid, (_, total) in after.processes.items()}
    for (pid, tid), (name, seconds) in after.threads.items():
        spent = seconds - before.threads.get((pid, tid), ("", 0.0))[1]
        out[role(pid, tid, name, after.processes[pid][0])] += spent
        unaccounted[pid] -= spent
    out["other"] += sum(max(0.0, seconds) for seconds in unaccounted.values())
    return {name: seconds for name, seconds in out.items() if seconds > 0}


def thread_role(name: str, process: str) -> str:
    """The role of a fastserve thread other than the main one, from its name."""
    if name == process:
        return "TF pools"  # unnamed (see above)
    for prefix, role in (("fastserve-grpc", "gRPC loop"), ("fastserve-cq", "gRPC CQ"), ("fastserve-batch", "batch threads"),
                         ("fastserve-exec", "exec threads"), ("tf_", "TF pools")):
        if name.startswith(prefix):
            return role
    return "gRPC core" if name.startswith(GRPC_CORE) else "other"


def fastserve_role(pid: int, tid: int, name: str, process: str) -> str:
    return "REST loop" if tid == pid else thread_role(name, process)


def ceiling_role(pid: int, tid: int, name: str, process: str) -> str:
    return "other" if tid == pid else thread_role(name, process)  # its main thread only waits for SIGTERM


def pytriton_role(host: int):
    """PyTriton's processes: tritonserver, its Python backend stubs (one per model instance, with
    their helpers), and the host process that runs the infer functions (TensorFlow; its Python
    threads named as in fastserve, by bench/named_threads.py)."""
    def role(pid: int, tid: int, name: str, process: str) -> str:
        if process == "tritonserver":
            return "Triton core"
        if process.startswith("triton_python"):
            return "Triton stubs"
        if pid == host and tid != pid and (name == process or name.startswith("tf_")):
            return "TF pools"
        return "PyTriton Python" if pid == host else "other"

    return role


def children(pid: int) -> list[int]:
    """pid and every process below it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        stat = read(entry / "stat") if entry.name.isdigit() else None
        if stat is not None:
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += parents.get(current, [])
    return out
