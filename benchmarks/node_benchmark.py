"""Benchmark: ``medseg listen`` receiving a real series from a real Orthanc on this machine (not a test).

Each repeat starts Debian's Orthanc on free loopback ports (the launcher of the PACS tests, ``tests/orthanc.py``)
with a fresh storage folder, uploads the series (default: the 19-slice ProstateX T2 series in ``../shared/data``),
starts ``medseg listen --idle 2`` in a fresh folder sending SEG and RTSTRUCT back to that Orthanc, and has Orthanc
send the series by C-STORE. The stages are timed from what the node records — the millisecond timestamps of its log
lines, ``node.sqlite`` (first and last instance received), the results' ``ledger.sqlite`` (per-stage seconds of the
prediction) and ``outbox.sqlite`` (when each result was sent) — and from Orthanc's REST API, polled every 0.1 s:

- ``startup_s``: starting the node process until it listens (imports, model loaded, port open);
- ``model_loaded_s``: starting the node process until its model is loaded;
- ``first_instance_s``: the C-STORE request to Orthanc until the node has the first instance;
- ``arrival_s``: the first instance until the last one;
- ``complete_after_last_s``: the last instance until the node declares the series complete (``--idle``; when a
  pause longer than that within the series completed it early — a loaded machine — the last completion counts,
  and ``completions`` in the raw timings says how many there were);
- ``prediction_s``: reading, preprocessing, the network and exporting the labels (the ledger's case time less
  writing); ``network_s`` is the network alone;
- ``write_s``: writing the SEG and the RTSTRUCT;
- ``predicted_after_complete_s``: the series complete until its results are queued for sending (finding the
  series' files, the prediction and writing, the ledger);
- ``sent_after_predicted_s``: the node's "predicted" log line until the last result is sent;
- ``seg_in_orthanc_s``, ``rtstruct_in_orthanc_s``, ``both_in_orthanc_s``: the first instance received by the node
  until Orthanc lists the SEG, the RTSTRUCT, both.

The model is a tiny network trained here the way the PACS tests train theirs (``train_tiny_run`` of
``tests/inference/conftest.py``), or the run folder given by ``--model``. Writes the machine (CPU model, cores, load
average at the start and the end: shared machines are noisy), versions, every repeat's raw timings and the medians
to ``benchmarks/results/node_cpu.json`` (or ``--out``).

    OMP_NUM_THREADS=1 python benchmarks/node_benchmark.py --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_SERIES = REPO.parent / "shared" / "data" / "prostatex_t2_series"
AET = "MEDSEG"
POLL_S = 0.1

# The Orthanc launcher and the tiny training run are the PACS tests' own, imported from the checkout's tests/.
sys.path.insert(0, str(REPO))
from tests.orthanc import ORTHANC, Orthanc, free_port  # noqa: E402

METRICS = ("startup_s", "model_loaded_s", "first_instance_s", "arrival_s", "complete_after_last_s", "prediction_s",
           "network_s", "write_s", "predicted_after_complete_s", "sent_after_predicted_s", "seg_in_orthanc_s",
           "rtstruct_in_orthanc_s", "both_in_orthanc_s")


def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    return {"cpu": model, "cores": os.cpu_count(), "system": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _versions(orthanc_version: str) -> dict[str, str]:
    out = {"python": platform.python_version(), "orthanc": orthanc_version}
    for package in ("medseg", "torch", "pydicom", "pynetdicom", "highdicom"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _wait(condition: Any, timeout: float, what: str, poll: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _log_times(text: str) -> list[tuple[float, str]]:
    """(Unix time, message) of each timestamped line of the node's log."""
    lines = []
    for line in text.splitlines():
        try:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            continue  # progress lines of the prediction carry no timestamp
        lines.append((stamp.timestamp(), line[24:]))
    return lines


def _when(lines: list[tuple[float, str]], fragment: str) -> list[float]:
    """The times of the node's log lines containing ``fragment`` (at least one)."""
    found = [t for t, message in lines if fragment in message]
    if not found:
        raise RuntimeError(f"the node's log has no line with {fragment!r}")
    return found


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(str(db), timeout=10)) as con:
        return con.execute(sql).fetchall()


def _status(folder: Path) -> str | None:
    db = folder / "node.sqlite"
    if not db.exists():
        return None
    rows = _query(db, "SELECT status FROM series")
    return rows[0][0] if rows else None


def _listen(folder: Path, model: Path, port: int, destination: str, idle: float, tta: bool) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "medseg", "listen", "-o", str(folder), "--aet", AET, "--port", str(port),
            "--bind", "127.0.0.1", "-m", str(model), "--format", "dicom-seg,dicom-rtstruct", "--idle", f"{idle:g}",
            "--device", "cpu", "--tta" if tta else "--no-tta", "--send-to", destination]
    with open(folder.parent / f"{folder.name}.log", "ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=log)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def one_repeat(work: Path, model: Path, files: list[Path], idle: float, tta: bool, timeout: float) -> dict[str, Any]:
    """Send the series once through a fresh Orthanc and a fresh node; the stage times (see the module docstring)."""
    import pydicom

    work.mkdir(parents=True)
    load = os.getloadavg()
    port = free_port()
    node, log_path = work / "node", work / "node.log"
    with Orthanc(work / "orthanc", modalities={"medseg": (AET, port)}, dicomweb=False) as pacs:
        pacs.upload(files)
        (source,) = pacs.get("/series")
        node.mkdir()
        spawned = time.time()
        process = _listen(node, model, port, pacs.node, idle, tta)
        try:
            _wait(lambda: "listening as" in log_path.read_text() or process.poll() is not None, timeout,
                  "medseg listen to start")
            if process.poll() is not None:
                raise RuntimeError(f"medseg listen exited at start:\n{log_path.read_text()[-3000:]}")
            requested = time.time()
            pacs.post("/modalities/medseg/store", {"Resources": [source], "Synchronous": True})
            store_returned = time.time()
            seen: dict[str, float] = {}
            known = {source}
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no results from medseg listen:\n{log_path.read_text()[-3000:]}")
                status, now = _status(node), time.time()
                if status in ("failed", "send_failed"):
                    raise RuntimeError(f"the series ended {status}:\n{log_path.read_text()[-3000:]}")
                for series in set(pacs.get("/series")) - known:
                    known.add(series)
                    seen.setdefault(pacs.get(f"/series/{series}")["MainDicomTags"].get("Modality", "?"), now)
                if status == "sent" and {"SEG", "RTSTRUCT"} <= seen.keys():
                    break
                time.sleep(POLL_S)
            in_orthanc = pacs.instances_by_modality()
        finally:
            _stop(process)
    lines = _log_times(log_path.read_text())
    (first, last, instances), = _query(node / "node.sqlite",
                                       "SELECT first_received, last_received, instances FROM series")
    (case_started, timings_json), = _query(node / "results" / "ledger.sqlite", "SELECT started_at, timings FROM cases")
    timings = json.loads(timings_json)
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).Modality): t
            for f, t in _query(node / "outbox.sqlite", "SELECT file, sent_at FROM sends")}
    # a pause longer than --idle within the series (a loaded machine) completes it early: the last completion counts
    completions = _when(lines, ": complete (")
    complete, predicted = completions[-1], _when(lines, ": predicted in ")[-1]
    result = {
        "startup_s": _when(lines, "listening as")[0] - spawned,
        "model_loaded_s": _when(lines, "model loaded")[0] - spawned,
        "first_instance_s": first - requested,
        "arrival_s": last - first,
        "complete_after_last_s": complete - last,
        "prediction_s": timings["total"] - timings["write"],
        "network_s": timings.get("predict", float("nan")),
        "write_s": timings["write"],
        "predicted_after_complete_s": predicted - complete,
        "sent_after_predicted_s": max(sent.values()) - predicted,
        "seg_in_orthanc_s": seen["SEG"] - first,
        "rtstruct_in_orthanc_s": seen["RTSTRUCT"] - first,
        "both_in_orthanc_s": max(seen["SEG"], seen["RTSTRUCT"]) - first,
    }
    raw = {"load_average_start": [round(x, 2) for x in load], "instances": instances, "completions": len(completions),
           "orthanc_instances_at_end": in_orthanc,
           "orthanc_store_request_s": store_returned - requested, "case_timings_s": timings,
           "sent_at_after_first_instance_s": {m: t - first for m, t in sent.items()},
           "complete_to_case_started_s": case_started - complete}
    return {**{k: round(v, 3) for k, v in result.items()}, "raw": raw}


def _train(work: Path) -> Path:
    from tests.inference.conftest import train_tiny_run

    folder = work / "trained"
    folder.mkdir(parents=True)
    return train_tiny_run(folder)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, default=DEFAULT_SERIES, help="folder of one DICOM series (*.dcm)")
    parser.add_argument("--model", type=Path, default=None,
                        help="run folder of `medseg train` (default: train a tiny one here, as the PACS tests do)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle", type=float, default=2.0, help="medseg listen --idle")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (default: --no-tta)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds each stage may take before giving up")
    parser.add_argument("--work", type=Path, default=None, help="working folder kept after the run (default: a "
                                                                 "temporary one, removed)")
    parser.add_argument("--out", type=Path, default=RESULTS / "node_cpu.json")
    args = parser.parse_args(argv)
    if not os.access(ORTHANC, os.X_OK):
        parser.error("Orthanc is not installed (Debian: apt-get install orthanc)")
    files = sorted(args.series.glob("*.dcm"))
    if not files:
        parser.error(f"--series {args.series}: no *.dcm files")
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medseg-node-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        model = args.model
        train_s = None
        if model is None:
            t0 = time.perf_counter()
            model = _train(work)
            train_s = time.perf_counter() - t0
            print(f"trained a tiny run in {train_s:.1f} s: {model}", flush=True)
        with Orthanc(work / "orthanc_version", dicomweb=False) as pacs:
            orthanc_version = str(pacs.get("/system")["Version"])
        repeats = []
        for r in range(args.repeats):
            entry = one_repeat(work / f"repeat_{r}", model, files, args.idle, args.tta, args.timeout)
            repeats.append(entry)
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {entry[k]:.2f}" for k in METRICS), flush=True)
    medians = {k: round(statistics.median(e[k] for e in repeats), 3) for k in METRICS}
    report = {
        "benchmark": "medseg listen receiving a DICOM series from Orthanc on the same machine",
        "started_utc": started, "machine": {**_machine(), "load_average_start": [round(x, 2) for x in load_start],
                                             "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": _versions(orthanc_version),
        "series": {"folder": args.series.name, "instances": len(files)},
        "model": "tiny run trained here (tests/inference/conftest.py train_tiny_run)" if args.model is None
        else str(args.model),
        "train_s": None if train_s is None else round(train_s, 1),
        "listen": {"idle_s": args.idle, "tta": args.tta, "formats": ["dicom-seg", "dicom-rtstruct"],
                   "device": "cpu"},
        "repeats": args.repeats, "medians": medians, "runs": repeats,
        "note": "each repeat: a fresh Orthanc and a fresh node; times from the node's log (ms), node.sqlite, the "
                "results' ledger, outbox.sqlite and Orthanc's REST API polled every 0.1 s",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("medians: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
