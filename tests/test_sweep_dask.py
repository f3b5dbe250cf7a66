"""Sweeps on a Dask cluster that fails: a worker killed under a point, no workers, a bad address.

The clusters are LocalClusters on 127.0.0.1; the killed worker is a real process (processes=True)
ended with SIGKILL while it runs a point, as the kernel's OOM killer would end it.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import tempfile
import threading
import time

import pytest

from mlusim.cli import main
from mlusim.progress import Progress

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _kill_during_a_point(scheduler, pid: int, first_row: threading.Event, done: threading.Event) -> None:
    """SIGKILL the worker while it runs a point, once the client holds the first point's row."""
    first_row.wait(60)
    deadline, since = time.monotonic() + 60, None
    while not done.is_set() and time.monotonic() < deadline:
        try:
            states = [ts.state for ts in list(scheduler.tasks.values()) if str(ts.key).startswith("run_point")]
        except RuntimeError:       # the scheduler's loop changed the dict under us; look again
            continue
        since = (since or time.monotonic()) if "processing" in states else None
        if since is not None and time.monotonic() - since > 0.05:      # a point takes ~0.3 s here
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.005)


def test_killed_worker_writes_finished_rows_one_line_exit_2_no_temp_left(capsys, tmp_path, monkeypatch):
    model = tmp_path / "mnist.mlu"
    assert main(["compile", "--model", "mnist", "--batch", "256", "--cores", "1", "-o", str(model)]) == 0
    temp = tmp_path / "tmp"        # the workers' (and this process's) temporary files go here
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    capsys.readouterr()
    first_row, done = threading.Event(), threading.Event()
    update = Progress.update

    def update_seen(self, what, n, *args, **kw):        # the sweep's progress: rows the client holds
        if n >= 1:
            first_row.set()
        return update(self, what, n, *args, **kw)
    monkeypatch.setattr(Progress, "update", update_seen)
    # no retries: the first death of a worker under a point fails it, as the third does by default;
    # workers forked rather than spawned start in 0.4 s instead of 4 (nothing to import again)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.worker.multiprocessing-method": "fork"}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     dashboard_address=":0", local_directory=str(tmp_path / "dask")) as cluster:
        with distributed.Client(cluster) as c:
            pid = next(iter(c.run(os.getpid).values()))
        killer = threading.Thread(target=_kill_during_a_point, args=(cluster.scheduler, pid, first_row, done))
        killer.start()
        try:
            code, out, err = cli(capsys, "sweep", str(model), "--set", "dram.bandwidth_gbps=25.6,51.2,102.4,204.8",
                                 "--cores", "1", "--cluster", cluster.scheduler_address,
                                 "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json"))
        finally:
            done.set()
            killer.join()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("mlusim: error: sweep point "), err
    assert "every worker that ran it died (KilledWorker)" in err and cluster.scheduler_address in err
    with open(tmp_path / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 1 <= len(rows) < 4 and f"{len(rows)} of 4 point(s) finished" in err
    assert all(int(r["Total Cycles"]) > 0 for r in rows)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert len(doc["rows"]) == len(rows) and doc["failed"] and doc["failed"] in err
    failed_point = int(err.split("sweep point ")[1].split(" ")[0])
    assert failed_point not in [r["point"] for r in doc["rows"]]
    assert not [p.name for p in temp.iterdir() if p.name.startswith("mlusim-")]    # shipped program files
    assert not [p.name for p in (tmp_path / "dask").rglob("worker-*")]              # the workers' own dirs


def test_no_workers_fails_after_the_cluster_timeout(capsys):
    with distributed.LocalCluster(n_workers=0, processes=False, host="127.0.0.1", protocol="tcp",
                                  dashboard_address=":0") as cluster:
        t0 = time.monotonic()
        code, out, err = cli(capsys, "sweep", "mnist", "--cores", "1", "--cluster", cluster.scheduler_address,
                             "--cluster-timeout", "0.5")
        waited = time.monotonic() - t0
    assert code == 2 and err.count("\n") == 1
    assert f"the Dask scheduler at {cluster.scheduler_address} has no workers after 0.5 s" in err
    assert waited < 10


def test_workers_leaving_mid_sweep_fail_after_the_timeout_with_the_finished_rows(tmp_path):
    """The workers go (retired, not killed): the points left wait for none, so the sweep fails
    after --cluster-timeout rather than hanging, with the rows that finished."""
    from mlusim.sweep import SweepFailed, sweep

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, host="127.0.0.1", protocol="tcp",
                                  dashboard_address=":0") as cluster:
        def retire_after_first(done, total, row):
            if done == 1:
                cluster.scale(0)
        with pytest.raises(SweepFailed) as e:
            sweep("mnist", "mlu270", {"dram.bandwidth_gbps": [25.6, 51.2, 102.4, 204.8, 409.6]}, [1],
                  cluster=cluster.scheduler_address, cluster_timeout=0.5, progress=retire_after_first)
    assert "no workers at" in str(e.value) and "for 0.5 s (--cluster-timeout)" in str(e.value)
    assert 1 <= len(e.value.rows) < 5 and all(r["cycles"] > 0 for r in e.value.rows)
    assert f"{len(e.value.rows)} of 5 point(s) finished" in str(e.value)


@pytest.mark.parametrize("address,needle", [
    ("tcp://127.0.0.1:99999", "port 99999 is not in 1..65535"),
    ("tcp://127.0.0.1:abc", "expected a scheduler address"),
    ("http://10.0.0.5:8786", "unknown protocol 'http'"),
    ("tcp://", "expected a scheduler address"),
    ("10.0.0.5:8786:1", "expected a scheduler address"),
    ("sched uler:8786", "expected a scheduler address"),
])
def test_malformed_address_is_one_line_exit_2_before_any_network(capsys, address, needle):
    code, out, err = cli(capsys, "sweep", "mnist", "--cores", "1", "--cluster", address, "--cluster-timeout", "30")
    assert code == 2 and err.count("\n") == 1 and err.startswith("mlusim: error: --cluster ")
    assert needle in err


def test_scheduler_lost_mid_sweep_fails_with_the_finished_rows():
    from mlusim.sweep import SweepFailed, sweep

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, host="127.0.0.1",
                                       protocol="tcp", dashboard_address=":0")
    address = cluster.scheduler_address

    def close_after_first(done, total, row):
        if done == 1:
            cluster.close()
    try:
        with pytest.raises(SweepFailed) as e:
            sweep("mnist", "mlu270", {"dram.bandwidth_gbps": [25.6, 51.2, 102.4, 204.8, 409.6]}, [1],
                  cluster=address, cluster_timeout=0.5, progress=close_after_first)
    finally:
        cluster.close()
    msg = str(e.value)
    assert f"lost the Dask scheduler at {address}" in msg or f"no connection to the scheduler at {address}" in msg
    assert 1 <= len(e.value.rows) < 5 and f"{len(e.value.rows)} of 5 point(s) finished" in msg
