"""Accuracy runs over a Ray cluster (``python -m benchmarks.accuracy ... --ray [ADDRESS]``).

Ray is the engine; this module only describes the work. Ray Data carries the image batches (one row per
batch of files, the same batches as the one-process run, so each image is computed exactly as there), and
each artifact gets a pool of actors that load its runner once and run at 1 thread. The driver converts
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
import socket
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

PACKAGES = ("mobilevit", "data", "export", "benchmarks")  # the code a worker imports (shipped with the job)
ROOT = Path(__file__).resolve().parent.parent


class ClusterError(RuntimeError):
    """The cluster cannot do the run as asked (unreachable, too few CPUs, a node without a runtime)."""


@dataclass
class Received:
    """One batch back from a worker: top-k of each file in ``[lo, hi)`` (-1 rows: skipped or unreadable)."""
    lo: int
    top: np.ndarray
    bad: list[int]


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
    """A Ray Data actor: loads one artifact's runner (or the PyTorch model) once, at 1 thread, then predicts
    the batches it is given. Errors come back as a column, so the driver can name the node."""

    def __init__(self, kind: str, name: str, shipped, reader, top_k: int):
        import ray
        import torch

        torch.set_num_threads(1)
        self.reader, self.top_k, self.node, self.error, self.runtime = reader, top_k, node_name(), "", ""
        self._tmp = None
        try:
            if kind == "pytorch":
                model = ray.get(shipped)

                def fn(x):
                    with torch.no_grad():
                        return model(torch.from_numpy(x)).numpy()
                self.fn, self.runtime = fn, f"torch {torch.__version__}"
            else:
                from export.runners import make_runner

                self._tmp = tempfile.TemporaryDirectory(prefix="mobilevit-ray-")
                path = unpack(ray.get(shipped), name, Path(self._tmp.name))
                runner = make_runner(path, threads=1)
                self.fn, self.runtime = runner, f"{runner.runtime} {runner.version}"
        except Exception as e:  # noqa: BLE001 - reported by the driver, with the node
            self.error = f"{type(e).__name__}: {e}"

    def __call__(self, batch: dict) -> dict:
        from data.folders import UnreadableImageError

        from .predictions import top_k

        lo, hi = int(batch["lo"][0]), int(batch["hi"][0])
        skip = {int(i) for i in batch["skip"][0]}
        top = np.full((1, hi - lo, self.top_k), -1, np.int32)
        bad, error, kind = [], self.error, "load" if self.error else ""
        if not error:
            try:
                idx, x, bad = self.reader.read(lo, hi, skip)
                if len(idx):
                    top[0, np.asarray(idx) - lo] = top_k(self.fn(x), self.top_k)
            except UnreadableImageError as e:
                error, kind = str(e), "image"
            except Exception as e:  # noqa: BLE001 - the artifact's row records it, as in a local run
                error, kind = f"{type(e).__name__}: {e}", "run"
        mask = np.zeros((1, hi - lo), bool)
        mask[0, [b - lo for b in bad]] = True
        return {"lo": np.array([lo]), "top": top, "bad": mask, "error": np.array([error]),
                "kind": np.array([kind]), "node": np.array([self.node]), "runtime": np.array([self.runtime])}


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

    def predict_model(self, model, reader, preds, unreadable: set, batch: int, label: str,
                      progress: bool = True) -> str:
        return self._predict("pytorch", "pytorch", self.ray.put(model), reader, preds, unreadable, batch, label,
                             progress)

    def predict_artifact(self, path: Path, reader, preds, unreadable: set, batch: int, label: str,
                         progress: bool = True) -> str:
        path = Path(path)
        return self._predict("artifact", path.name, self.ray.put(pack(path)), reader, preds, unreadable, batch,
                             label, progress)

    def _predict(self, kind, name, shipped, reader, preds, unreadable, batch, label, progress) -> str:
        """Fill ``preds`` from ``preds.done`` on; returns the workers' runtime and version."""
        from data.folders import UnreadableImageError

        from .predictions import SAVE_EVERY, TOP_K

        ray = self.ray
        n = len(preds.top)
        rows = [{"lo": lo, "hi": min(lo + batch, n), "skip": sorted(i for i in unreadable if lo <= i < lo + batch)}
                for lo in range(preds.done, n, batch)]
        if not rows:
            return ""
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        out = ds.map_batches(Predictor, fn_constructor_args=(kind, name, shipped, reader, TOP_K),
                             batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
                             num_cpus=1, batch_format="numpy")
        seen, runtime, start, got = set(), "", time.perf_counter(), 0
        try:
            for step, b in enumerate(out.iter_batches(batch_size=None, batch_format="numpy"), 1):
                for k in range(len(b["lo"])):
                    lo, error, kind_of = int(b["lo"][k]), str(b["error"][k]), str(b["kind"][k])
                    if kind_of == "load":
                        raise ClusterError(f"{label}: the worker on node {b['node'][k]} cannot load {name}: {error}")
                    if kind_of == "image":
                        raise UnreadableImageError(error)
                    if error:
                        raise RuntimeError(error)
                    if lo in seen or lo != preds.done:
                        raise RuntimeError(f"{label}: the batch of files {lo}.. came back "
                                           + ("twice" if lo in seen else f"out of order (expected {preds.done})"))
                    seen.add(lo)
                    top, bad = b["top"][k], b["bad"][k]
                    hi = min(lo + batch, n)
                    preds.top[lo:hi] = top[: hi - lo]
                    unreadable.update((lo + np.flatnonzero(bad[: hi - lo])).tolist())
                    preds.done = hi
                    preds.first_at = preds.first_at or time.perf_counter()
                    runtime = runtime or str(b["runtime"][k])
                    got += hi - lo
                if step % SAVE_EVERY == 0:
                    preds.save()
        finally:
            preds.save()
        if progress:
            self.log(f"{label}: {got} images in {time.perf_counter() - start:.1f} s on {self.workers} workers")
        return runtime
