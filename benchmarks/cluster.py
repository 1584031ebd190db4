"""Accuracy runs over a Ray cluster (``python -m benchmarks.accuracy ... --ray [ADDRESS]``).

Ray is the engine; this module only describes the work. Ray Data carries the image batches (one row per
batch of files, the same batches as the one-process run, so each image is computed exactly as there). The
artifacts' passes go through one dataset, pass after pass, on one pool of actors for the run (PyTorch's
reference pass, which runs before the conversions, has its own): each actor loads a pass's runner once, when
its first batch of that pass comes, and runs at 1 thread. One pool, not one per artifact: an actor's start
(a process, its imports, Ray Data's set-up) took 3-13 s per artifact on this project's 2-core machine,
more than the predictions of a few hundred images. The driver converts
every artifact once (``export.convert_all``) and ships it through the object store; workers never
convert. Workers read and decode their batches' images from their paths, so on a cluster of several
machines the image folder must be at the same path on every node (a shared or copied folder).

Nothing is lost: the driver writes each artifact's predictions as batches arrive, in order, so a killed
driver resumes where it stopped; an actor that dies mid-run is restarted by Ray Data and its batches
are run again (Ray Data's actor pools restart actors and retry their tasks); a batch that arrives twice
stops the run. A worker that cannot load an artifact's runtime ends the run with
:class:`ClusterError` (exit 2), naming the artifact and the node.

Ray is imported only here, and only when a run asks for it.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

PACKAGES = ("mobilevit", "data", "export", "benchmarks")  # the code a worker imports (shipped with the job)
ROOT = Path(__file__).resolve().parent.parent


class ClusterError(RuntimeError):
    """The cluster cannot do the run as asked (unreachable, too few CPUs, a node without a runtime)."""


# ------------------------------------------------------------------------------------ shipping
def pack(path: Path) -> bytes:
    """An artifact (file or folder, with any ``<name>.*`` sidecar) as one uncompressed tar."""
    path = Path(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted({path, *path.parent.glob(path.name + ".*")}):
            tar.add(p, arcname=p.name)
    return buf.getvalue()


def unpack(blob: bytes, name: str, into: Path) -> Path:
    """The artifact ``name`` out of :func:`pack`'s tar, under ``into``."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(into, filter="data")
    return into / name


def node_name() -> str:
    return f"{socket.gethostname()} ({os.environ.get('RAY_NODE_IP_ADDRESS', '') or _node_ip()})"


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label
        return "?"


# ------------------------------------------------------------------------------------- workers
class Predictor:
    """A Ray Data actor of the run's one pool: it predicts the batches it is given, of any pass, loading each
    pass's model (PyTorch's, or an artifact shipped as a tar) once, at 1 thread, when its first batch comes.
    Batches arrive pass after pass, so it keeps the last two loaded. Errors come back as a column, so the
    driver can name the node."""

    KEEP = 2

    def __init__(self, sources: list[tuple[str, object]], reader, top_k: int):
        """``sources[j]``: pass ``j``'s ``(name, is an artifact, object ref)``: the module, or the artifact's
        :func:`pack`."""
        import torch

        torch.set_num_threads(1)
        self.sources, self.reader, self.top_k, self.node = sources, reader, top_k, node_name()
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self._tmp = tempfile.TemporaryDirectory(prefix="mobilevit-ray-")
        self.loaded: dict[int, tuple] = {}  # pass -> (fn, runtime), oldest first
        self.failed: dict[int, str] = {}  # pass -> the error of one of its batches: its other batches skip

    def _load(self, j: int) -> tuple:
        import ray

        from .predictions import load_fn

        if j not in self.loaded:
            name, is_artifact, ref = self.sources[j]
            shipped = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
            source = unpack(shipped, name, Path(self._tmp.name) / str(j)) if is_artifact else shipped
            self.loaded[j] = load_fn(source, threads=1)
            while len(self.loaded) > self.KEEP:
                old = next(iter(self.loaded))
                del self.loaded[old]
                shutil.rmtree(Path(self._tmp.name) / str(old), ignore_errors=True)
        return self.loaded[j]

    def __call__(self, batch: dict) -> dict:
        from data.folders import UnreadableImageError

        from .predictions import top_k

        j, lo, hi = int(batch["job"][0]), int(batch["lo"][0]), int(batch["hi"][0])
        skip = {int(i) for i in batch["skip"][0]}
        top = np.full((1, hi - lo, self.top_k), -1, np.int32)
        bad, runtime, error, kind = [], "", self.failed.get(j, ""), "run" if j in self.failed else ""
        if not error:
            try:
                fn, runtime = self._load(j)
            except Exception as e:  # noqa: BLE001 - reported by the driver, with the node
                error, kind = f"{type(e).__name__}: {e}", "load"
        if not error:
            try:
                idx, x, bad = self.reader.read(lo, hi, skip)
                if len(idx):
                    top[0, np.asarray(idx) - lo] = top_k(fn(x), self.top_k)
            except UnreadableImageError as e:
                error, kind = str(e), "image"
            except Exception as e:  # noqa: BLE001 - the artifact's row records it, as in a local run
                error, kind = f"{type(e).__name__}: {e}", "run"
                self.failed[j] = error
        mask = np.zeros((1, hi - lo), bool)
        mask[0, [b - lo for b in bad]] = True
        return {"job": np.array([j]), "lo": np.array([lo]), "top": top, "bad": mask, "error": np.array([error]),
                "kind": np.array([kind]), "node": np.array([self.node]), "runtime": np.array([runtime]),
                "process": np.array([self.process])}


# -------------------------------------------------------------------------------------- driver
def _host_port(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; None for local / auto."""
    if address in (None, "", "local", "auto"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address}: give HOST:PORT, ray://HOST:PORT, auto, or nothing for a cluster "
                           "on this machine")
    return host, int(port)


def _loopback(address: str | None) -> bool:
    hp = _host_port(address)
    return hp is not None and (hp[0] == "localhost" or hp[0].startswith("127."))


def _reachable(address: str | None, timeout: float = 10.0) -> None:
    """Refuse at once an address where nothing listens (Ray itself retries for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"--ray {address}: nothing answers there ({e}); start the head with "
                           "`ray start --head --port PORT` and pass HOST:PORT") from e


class RayEngine:
    """Predictions of PyTorch and of each artifact on a Ray cluster: the same interface as the local engine
    of :mod:`benchmarks.accuracy` (``predict_model``, ``predict_artifact``)."""

    def __init__(self, address: str | None = None, workers: int | None = None, log: Callable = print):
        self.log = log
        if address in (None, "", "local") or _loopback(address):
            # a cluster of this machine alone: it talks over loopback (Ray would otherwise resolve 127.0.0.1 to
            # the machine's network address); read when Ray is first imported
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        _reachable(address)
        import ray

        self.ray = ray
        self.owned = not ray.is_initialized()
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="error",
                      runtime_env={"py_modules": [str(ROOT / p) for p in PACKAGES],
                                   "env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                                "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}})
        if self.owned:
            try:
                if address in (None, "", "local"):
                    ray.init(address="local", num_cpus=workers or os.cpu_count(), **kwargs)  # a new one
                else:
                    ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ClusterError(f"cannot reach a Ray cluster at {address!r} ({e}): start one with "
                                   "`ray start --head` and pass its address, or `--ray` alone for one on "
                                   "this machine") from e
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.workers = workers or cpus
        if self.workers < 1 or self.workers > cpus:
            self.close()
            raise ClusterError(f"--workers {self.workers}: the cluster has {cpus} CPUs; give at most {cpus}")
        self.address = address or "local"
        self.nodes = len([n for n in ray.nodes() if n.get("Alive")])
        import logging

        import ray.data

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines; errors still show
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # batches come back in file order: a resumable prefix
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        self.log(f"Ray {ray.__version__}: {self.nodes} node(s), {cpus} CPUs, {self.workers} workers at 1 thread "
                 f"({self.address})")

    def describe(self) -> dict:
        return {"engine": f"ray {self.ray.__version__}", "address": self.address, "nodes": self.nodes,
                "workers": self.workers, "threads_per_worker": 1}

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()

    def map(self, fn: Callable, calls: list[tuple]) -> list:
        """``[fn(*args) for args in calls]``, one Ray task (1 CPU) each; Ray re-runs a task whose worker died."""
        remote = self.ray.remote(num_cpus=1, max_retries=3)(fn)
        return self.ray.get([remote.remote(*args) for args in calls])

    def run(self, passes: list, reader, unreadable: set[int], batch: int, progress: bool = True) -> None:
        """Fill each pass's predictions (:class:`benchmarks.predictions.Pass`) from its ``done`` on, all passes
        through one Ray Data dataset and one actor pool: a row per batch of files, pass after pass, in order
        (``preserve_order``), so each pass's saved predictions are a prefix a rerun resumes from. Only the
        reference pass adds to ``unreadable``. Timing: a pass's seconds run from the previous pass's last batch
        (or the start) to its own last one, so the pool's start-up is the first pass's and they sum to the run."""
        from data.folders import UnreadableImageError

        from .predictions import SAVE_EVERY, TOP_K, timing

        ray = self.ray
        n = len(reader)
        rows = [{"job": j, "lo": lo, "hi": min(lo + batch, n),
                 "skip": sorted(i for i in unreadable if lo <= i < lo + batch)}
                for j, p in enumerate(passes) for lo in range(p.preds.done, n, batch)]
        if not rows:
            return
        sources = [(p.name, p.is_artifact, ray.put(pack(Path(p.source)) if p.is_artifact else p.source))
                   for p in passes]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        out = ds.map_batches(Predictor, fn_constructor_args=(sources, reader, TOP_K), batch_size=1,
                             compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
                             num_cpus=1, batch_format="numpy")
        start = last = time.perf_counter()
        first: dict[int, float] = {}
        files = {j: p.preds.done for j, p in enumerate(passes)}
        processes: dict[int, set[str]] = {j: set() for j in range(len(passes))}
        current = 0
        seen: set[tuple[int, int]] = set()

        def close(j: int) -> None:  # pass j has its last batch: its timing, its saved predictions
            nonlocal last
            now = time.perf_counter()
            p = passes[j]
            p.timing = timing(now - last, p.preds.done - files[j], first.get(j, now) - last) | {
                "processes": sorted(processes[j])}  # the worker processes (host:pid) that ran its batches
            if not p.error:
                p.preds.save()
            if progress:
                self.log(f"{p.label}: {p.preds.done - files[j]} images in {now - last:.1f} s on {self.workers} "
                         "workers" + (f" ({p.error})" if p.error else ""))
            last = now

        try:
            for b in out.iter_batches(batch_size=None, batch_format="numpy"):
                for k in range(len(b["lo"])):
                    j, lo, error, kind = int(b["job"][k]), int(b["lo"][k]), str(b["error"][k]), str(b["kind"][k])
                    p = passes[j]
                    if (j, lo) in seen or j < current or (lo != p.preds.done and not p.error):
                        raise RuntimeError(f"{p.label}: the batch of files {lo}.. came back "
                                           + ("twice" if (j, lo) in seen else "out of order"))
                    seen.add((j, lo))
                    while current < j:
                        close(current)
                        current += 1
                    first.setdefault(j, time.perf_counter())
                    processes[j].add(str(b["process"][k]))
                    if kind == "load":
                        raise ClusterError(f"{p.label}: the worker on node {b['node'][k]} cannot load {p.name}: "
                                           f"{error}")
                    if error and p.reference:
                        raise UnreadableImageError(error) if kind == "image" else RuntimeError(error)
                    hi = min(lo + batch, n)
                    if error:  # this artifact's row records it; its other batches are not used
                        p.error = p.error or error
                        continue
                    p.preds.top[lo:hi] = b["top"][k][: hi - lo]
                    if p.reference:
                        unreadable.update((lo + np.flatnonzero(b["bad"][k][: hi - lo])).tolist())
                    p.preds.done = hi
                    p.runtime = p.runtime or str(b["runtime"][k])
                    if (lo // batch + 1) % SAVE_EVERY == 0:
                        p.preds.save()
            while current < len(passes):
                close(current)
                current += 1
        finally:
            for p in passes:
                if not p.error:
                    p.preds.save()
        if progress:
            self.log(f"{len(rows)} batches of {len(passes)} pass(es) in {time.perf_counter() - start:.1f} s")
