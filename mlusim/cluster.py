"""Sweep points on a Dask distributed cluster, failing cleanly.

A cluster fails in ways a local process pool does not: the scheduler may have no workers (the
points would wait forever), a worker may die under a point (Dask retries it on another worker,
then gives up with KilledWorker), the scheduler may go away. Each becomes a ClusterError, one line
naming the address and the point, raised once the points that finished are in the caller's `rows`
list, so a sweep can still write them. Nothing here waits longer than the timeout
(--cluster-timeout) on a cluster that does nothing; a malformed address fails before any network.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable

from mlusim.errors import MlusimError, one_line

SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
ADDRESS_RE = re.compile(r"(?:(?P<scheme>[A-Za-z]+)://)?(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_.\-]{1,253})"
                        r"(?::(?P<port>[0-9]{1,5}))?", re.ASCII)
POLL_SECONDS = 0.05       # between looks at finished points: far below a point's time
WATCH_SECONDS = 1.0       # between looks at the scheduler's workers


class ClusterError(MlusimError):
    """The cluster could not run the sweep: unreachable, no workers, a point it could not finish."""


def quiet_logs() -> None:
    """Silence Dask's own log lines in this process (the command line's): a lost scheduler logs a
    traceback from the client's reconnect loop before the one-line error this module raises says
    the same. Dask sets levels per logger (distributed.client, ...) when it is imported, so every
    logger of its tree is set, after the import."""
    import logging

    try:
        import distributed  # noqa: F401 - its import configures the loggers we then quiet
    except ImportError:
        return
    names = [n for n in logging.Logger.manager.loggerDict if n == "distributed" or n.startswith("distributed.")]
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def check_address(address: object) -> str:
    """`address` if it has the form of a Dask scheduler address ([PROTOCOL://]HOST[:PORT]); else
    a ClusterError at once (Dask would otherwise wait for the timeout, or raise from deep inside)."""
    m = ADDRESS_RE.fullmatch(address) if isinstance(address, str) else None
    why = "" if m else "expected a scheduler address such as tcp://10.0.0.5:8786"
    if m and m["scheme"] and m["scheme"].lower() not in SCHEMES:
        why = f"unknown protocol '{m['scheme']}' (Dask schedulers listen on {', '.join(SCHEMES)})"
    elif m and m["port"] and not 1 <= int(m["port"]) <= 65535:
        why = f"port {m['port']} is not in 1..65535"
    if why:
        raise ClusterError(f"--cluster {str(address)[:80]!r}: {why}")
    return address


def is_client(obj) -> bool:
    """Whether `obj` is a distributed.Client (checked without importing Dask for an address)."""
    return type(obj).__name__ == "Client" and type(obj).__module__.startswith("distributed")


def connect(address: str, timeout: float):
    """A distributed.Client of the scheduler at `address` with at least one worker, within
    `timeout` seconds for each of the two."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError("--cluster needs Dask: pip install 'mlusim[cluster]'") from None
    check_address(address)
    try:
        client = Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                           f"(--cluster-timeout): {_first_line(e)}") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        close(client, timeout)
        raise ClusterError(f"the Dask scheduler at {address} has no workers after {timeout:g} s (--cluster-timeout); "
                           f"start some with `dask worker {address}`") from None
    return client


def close(client, timeout: float) -> None:
    """Close without hanging on a scheduler that is gone."""
    try:
        client.close(timeout=timeout)
    except Exception:    # noqa: BLE001 - closing a broken connection; the error that matters is raised already
        pass


def run(client, fn: Callable, tasks: list[dict], blobs, *, address: str, timeout: float, rows: list[dict],
        describe: Callable[[dict], str], progress: Callable | None = None) -> None:
    """Map `fn(task, blobs=...)` over `tasks` on `client`, appending each result to `rows` as it
    arrives (in completion order) and calling `progress(len(rows), len(tasks), row)`. A point that
    fails, or a cluster with no workers (or no scheduler) for `timeout` seconds, cancels the rest
    and raises ClusterError; `describe(task)` names the point in its message."""
    from distributed import as_completed

    futs: list = []
    try:
        shipped = client.scatter([blobs], broadcast=True)[0] if blobs else None   # one object: every file
        futs = client.map(fn, tasks, blobs=shipped, pure=False)
        pending = as_completed(futs, loop=client.loop, with_results=True)
        _collect(client, pending, {f.key: t for f, t in zip(futs, tasks)}, address, timeout, rows, describe, progress)
    except ClusterError:
        raise
    except Exception as e:     # noqa: BLE001 - Dask's comm errors vary by version; all mean the same here
        raise ClusterError(f"the Dask cluster at {address} failed: {type(e).__name__}: {_first_line(e)}; "
                           f"{len(rows)} of {len(tasks)} point(s) finished") from None
    finally:
        if len(rows) < len(tasks) and futs:      # an error or Ctrl-C: the rest is not wanted
            try:
                client.cancel(futs)
            except Exception:    # noqa: BLE001 - the scheduler may be gone; the error raising matters
                pass


def _collect(client, pending, task_of: dict, address: str, timeout: float, rows: list[dict],
             describe: Callable, progress: Callable | None) -> None:
    total = len(task_of)
    watch = _Watch(client, address, timeout)
    while not pending.is_empty():
        batch = pending.next_batch(block=False)
        if not batch:
            watch.check(len(rows), total)
            time.sleep(POLL_SECONDS)
            continue
        failed = None
        for f, result in batch:       # results come with the futures: a worker that dies keeps none
            # a row in hand is a finished point, even if its worker has retired since and the
            # future's status moved on ("lost"): only an exception is a failure
            if f.status != "finished" and not isinstance(result, dict):
                failed = failed or (f, result)
                continue
            rows.append(result)
            if progress:
                progress(len(rows), total, rows[-1])
        if failed:
            f, result = failed
            done = f"{len(rows)} of {total} point(s) finished"
            if f.status == "cancelled" or "Cancelled" in type(result).__name__:    # not this point's doing
                raise ClusterError(f"lost the Dask scheduler at {address}: it dropped the points still to run "
                                   f"(a lost connection, or the scheduler restarted); {done}")
            raise ClusterError(f"sweep {describe(task_of[f.key])} failed on {address}: {_why(result)}; {done}")


class _Watch:
    """The scheduler's workers, looked at every WATCH_SECONDS: none (or no scheduler) for longer
    than the timeout ends the sweep instead of leaving its points waiting forever."""

    def __init__(self, client, address: str, timeout: float):
        self.client, self.address, self.timeout = client, address, timeout
        self.next = time.monotonic() + WATCH_SECONDS
        self.idle_since: float | None = None

    def check(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + WATCH_SECONDS
        workers, what = 0, "no connection to the scheduler"
        try:
            if self.client.status == "running":
                workers, what = len(self.client.nthreads()), "no workers"
        except Exception:    # noqa: BLE001 - any failure to ask is a scheduler we cannot use
            pass
        if workers:
            self.idle_since = None
            return
        self.idle_since = self.idle_since or now
        if now - self.idle_since > self.timeout:
            raise ClusterError(f"{what} at {self.address} for {self.timeout:g} s (--cluster-timeout); "
                               f"{done} of {total} point(s) finished")


def _why(result) -> str:
    """Why a point failed, in a few words a user can act on. `result` is what
    as_completed(with_results=True) gave for it: the exception, or (type, exception, traceback)."""
    e = result[1] if isinstance(result, tuple) and len(result) == 3 else result
    name = type(e).__name__
    if name == "KilledWorker":
        return ("every worker that ran it died (KilledWorker): out of memory, killed, or crashed; the workers' "
                "logs say which")
    return f"{name}: {_first_line(e)}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return one_line(text[0] if text else type(e).__name__, 300)
