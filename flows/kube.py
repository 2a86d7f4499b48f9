"""Training Jobs on Kubernetes through the kubernetes Python client (no ``kubectl`` in the image).

:func:`kubernetes_apis` connects (the pod's service account inside a cluster, else the
kubeconfig); :func:`apply` creates the headless Service and the Job that
``flows.train.render_k8s_job`` renders, adopting a Job of the same name that is still
running (a retried flow task) and replacing a finished one; :func:`wait_for_job` polls
the Job until it completes or fails, calling ``on_poll`` in between (the training
monitor); :class:`PodLogs` follows the log of every pod of the Job into a logger while
it runs, including the pods Kubernetes starts anew after a failure (``backoffLimit``).

The API objects are used through attribute access only (``job.status.conditions``,
``pod.metadata.uid``), so a double with the same attributes stands in for the API in tests.
The flow pod's service account needs: jobs (create, get, delete), services (create, get),
pods (list), pods/log (get) in the namespace: ``infra/k8s/rbac.yaml``.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from bzpipe.errors import BzpipeError

#: label of every pod of a training Job (train-job.yaml) -> the Job's name
JOB_LABEL = "bzpipe/job"
#: set by Kubernetes on the pods of an Indexed Job
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CONTAINER = "prefect-job"


class ClusterError(BzpipeError):
    """A cluster client is missing, or a submitted training job failed."""


def kubernetes_apis() -> tuple[Any, Any]:
    """``(BatchV1Api, CoreV1Api)`` with the in-cluster service account, else the kubeconfig."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ClusterError("train.backend='kubernetes' needs the kubernetes Python client: "
                           "pip install -e '.[k8s]' (images: docker build --build-arg EXTRAS=k8s)") from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise ClusterError("no Kubernetes credentials: not inside a pod with a service account, and no "
                               f"usable kubeconfig ({type(e).__name__}: {e})") from None
    return client.BatchV1Api(), client.CoreV1Api()


def _status(e: BaseException) -> int | None:
    """HTTP status of a kubernetes ``ApiException`` (or a double of it)."""
    return getattr(e, "status", None)


def _finished(job: Any) -> str | None:
    """``"Complete"`` / ``"Failed"`` when the Job has that condition, else None."""
    for c in (getattr(job.status, "conditions", None) or []):
        if c.type in ("Complete", "Failed") and str(c.status) == "True":
            return c.type
    return None


def apply(batch: Any, core: Any, docs: list[dict[str, Any]], log: logging.Logger | Any) -> str:
    """Create the Service(s) and the Job of ``docs``; returns ``"created"`` or ``"adopted"``.

    A Job of the same name that is still running is adopted (waited for, not duplicated);
    one that has finished is deleted first (its pods with it), so a rerun resumes from
    ``checkpoint-last.pt`` in a fresh Job.
    """
    job = next(d for d in docs if d["kind"] == "Job")
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        try:
            core.create_namespaced_service(namespace=ns, body=svc)
        except Exception as e:  # noqa: BLE001 - ApiException
            if _status(e) != 409:  # 409: the headless Service of an earlier run: same selector, keep it
                raise ClusterError(f"cannot create Service {ns}/{svc['metadata']['name']}: {e}") from None
    try:
        batch.create_namespaced_job(namespace=ns, body=job)
        return "created"
    except Exception as e:  # noqa: BLE001
        if _status(e) != 409:
            raise ClusterError(f"cannot create Job {ns}/{name}: {e}") from None
    old = batch.read_namespaced_job_status(name=name, namespace=ns)
    if _finished(old) is None:
        log.info("Job %s/%s is still running (an earlier attempt of this run): waiting for it", ns, name)
        return "adopted"
    log.info("replacing the finished Job %s/%s of an earlier attempt", ns, name)
    batch.delete_namespaced_job(name=name, namespace=ns, propagation_policy="Foreground")
    for _ in range(120):
        try:
            batch.read_namespaced_job_status(name=name, namespace=ns)
        except Exception as e:  # noqa: BLE001
            if _status(e) == 404:
                break
            raise
        time.sleep(1.0)
    batch.create_namespaced_job(namespace=ns, body=job)
    return "created"


def wait_for_job(batch: Any, name: str, ns: str, *, poll_s: float = 30.0,
                 on_poll: Callable[[], None] | None = None, timeout_s: float | None = None) -> Any:
    """Poll the Job until it completes (returns it) or fails (:class:`ClusterError` with its reason)."""
    t0 = time.monotonic()
    while True:
        job = batch.read_namespaced_job_status(name=name, namespace=ns)
        if on_poll is not None:
            on_poll()
        state = _finished(job)
        if state == "Complete":
            return job
        if state == "Failed":
            why = next((f"{c.reason}: {c.message}" for c in job.status.conditions if c.type == "Failed"), "")
            raise ClusterError(f"Kubernetes Job {ns}/{name} failed ({why}); its pods' logs are in this flow "
                               "run's log")
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise ClusterError(f"Kubernetes Job {ns}/{name} did not finish within {timeout_s:g} s")
        time.sleep(poll_s)


class PodLogs:
    """Follows the log of every pod of Job ``name`` into ``log`` (one thread per pod), from a
    background thread that looks for new pods every ``poll_s`` seconds, until :meth:`stop`."""

    def __init__(self, core: Any, name: str, ns: str, log: logging.Logger | Any, poll_s: float = 5.0) -> None:
        self.core, self.name, self.ns, self.log, self.poll_s = core, name, ns, log, poll_s
        # every thread runs in its own copy of the creator's context (a Prefect run logger needs the run's)
        self._context = contextvars.copy_context()
        self._stop = threading.Event()
        self._followed: set[str] = set()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> PodLogs:
        t = threading.Thread(target=self._context.copy().run, args=(self._watch,), daemon=True,
                             name=f"logs-{self.name}")
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout=timeout_s)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(namespace=self.ns,
                                                     label_selector=f"{JOB_LABEL}={self.name}").items
            except Exception as e:  # noqa: BLE001 - transient API errors: try again next round
                self.log.warning("listing the pods of %s/%s: %s", self.ns, self.name, e)
                pods = []
            for pod in pods:
                uid = pod.metadata.uid
                if uid in self._followed or pod.status.phase not in ("Running", "Succeeded", "Failed"):
                    continue
                self._followed.add(uid)
                index = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION, "?")
                t = threading.Thread(target=self._context.copy().run, args=(self._follow, pod, index),
                                     daemon=True)
                t.start()
                self._threads.append(t)
            self._stop.wait(self.poll_s)

    def _follow(self, pod: Any, index: str) -> None:
        prefix = f"[{self.name} pod {index}]"
        try:
            resp = self.core.read_namespaced_pod_log(name=pod.metadata.name, namespace=self.ns,
                                                     container=CONTAINER, follow=True, _preload_content=False)
            buf = b""
            for chunk in resp.stream():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.log.info("%s %s", prefix, line.decode(errors="replace").rstrip())
                if self._stop.is_set():
                    break
            if buf.strip():
                self.log.info("%s %s", prefix, buf.decode(errors="replace").rstrip())
        except Exception as e:  # noqa: BLE001 - a log stream that breaks must not fail the training
            self.log.warning("%s log stream ended: %s: %s", prefix, type(e).__name__, e)
