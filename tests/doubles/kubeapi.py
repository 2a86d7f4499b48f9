"""A double of the Kubernetes API calls the train flow makes (kubernetes client's BatchV1Api / CoreV1Api).

It keeps Jobs and Services in memory, answers with objects that have the same attributes as
the client's models (``job.status.conditions[i].type``, ``pod.metadata.uid``), raises
exceptions with the client's ``status`` attribute (404, 409), and lets a test script what
the cluster does between polls (``on_read``: e.g. write an epoch's metrics, then complete).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from types import SimpleNamespace as NS
from typing import Any


class ApiError(Exception):
    """Stands in for ``kubernetes.client.ApiException``."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason = status, reason


def condition(kind: str, reason: str = "", message: str = "") -> NS:
    return NS(type=kind, status="True", reason=reason, message=message)


class FakeLogStream:
    def __init__(self, text: str) -> None:
        self._data = text.encode()

    def stream(self, amt: int = 64):
        for i in range(0, len(self._data), amt):
            yield self._data[i:i + amt]


class FakeKube:
    """Both APIs in one object: pass it as ``(batch, core)``."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.status: dict[tuple[str, str], NS] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.pods: list[NS] = []
        self.logs: dict[str, str] = {}
        self.on_read: Callable[[FakeKube, str, str, int], None] | None = None
        self.reads = 0
        self._uid = itertools.count(1)

    # ------------------------------------------------------------------ batch/v1
    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> NS:
        name = body["metadata"]["name"]
        self.calls.append(("create_job", name))
        if (namespace, name) in self.jobs:
            raise ApiError(409, "AlreadyExists")
        self.jobs[(namespace, name)] = copy.deepcopy(body)
        self.status[(namespace, name)] = NS(active=1, succeeded=None, failed=None, conditions=None)
        return NS(metadata=NS(name=name, namespace=namespace))

    def read_namespaced_job_status(self, name: str, namespace: str) -> NS:
        self.calls.append(("read_job", name))
        if (namespace, name) not in self.jobs:
            raise ApiError(404, "NotFound")
        self.reads += 1
        if self.on_read is not None:
            self.on_read(self, name, namespace, self.reads)
        return NS(metadata=NS(name=name, namespace=namespace), status=self.status[(namespace, name)])

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str | None = None) -> None:
        self.calls.append(("delete_job", name))
        if self.jobs.pop((namespace, name), None) is None:
            raise ApiError(404, "NotFound")
        self.status.pop((namespace, name), None)

    # ------------------------------------------------------------------ core/v1
    def create_namespaced_service(self, namespace: str, body: dict[str, Any]) -> NS:
        name = body["metadata"]["name"]
        self.calls.append(("create_service", name))
        if (namespace, name) in self.services:
            raise ApiError(409, "AlreadyExists")
        self.services[(namespace, name)] = copy.deepcopy(body)
        return NS(metadata=NS(name=name))

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> NS:
        key, _, value = label_selector.partition("=")
        return NS(items=[p for p in self.pods if p.metadata.labels.get(key) == value])

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str | None = None,
                                follow: bool = False, _preload_content: bool = True) -> Any:
        self.calls.append(("read_log", name))
        return FakeLogStream(self.logs.get(name, ""))

    # ------------------------------------------------------------------ script helpers
    def finish(self, namespace: str, name: str, kind: str = "Complete", reason: str = "", message: str = "") -> None:
        st = self.status[(namespace, name)]
        st.active, st.conditions = 0, [condition(kind, reason, message)]
        if kind == "Complete":
            st.succeeded = 1
        else:
            st.failed = 1

    def add_pod(self, job: str, index: int, log: str, phase: str = "Running") -> NS:
        name = f"{job}-{index}-{next(self._uid)}"
        pod = NS(metadata=NS(name=name, uid=f"uid-{name}", labels={"bzpipe/job": job},
                             annotations={"batch.kubernetes.io/job-completion-index": str(index)}),
                 status=NS(phase=phase))
        self.pods.append(pod)
        self.logs[name] = log
        return pod
