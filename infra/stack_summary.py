"""What the local stack holds, read from the Prefect REST API (stdlib only; used by infra/stack.sh).

    python infra/stack_summary.py http://127.0.0.1:4200/api deployments
    python infra/stack_summary.py http://127.0.0.1:4200/api status
    python infra/stack_summary.py http://127.0.0.1:4200/api mark-stopped bzpipe-local

``mark-stopped``: after `stack.sh down` has killed the worker and its flow-run processes, the
runs it was executing would stay "Running" forever; this sets them Cancelled.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

#: answers a busy SQLite-backed server gives for requests it did not carry out (Prefect's client retries them)
RETRY_CODES = (429, 502, 503)


def post(api: str, path: str, body: dict[str, Any] | None = None, tries: int = 5) -> Any:
    """POST ``body`` (filters and state changes, all safe to repeat), retrying 429/502/503 and timeouts."""
    for attempt in range(tries):
        req = urllib.request.Request(api + path, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            if e.code not in RETRY_CODES or attempt == tries - 1:
                raise
        except (TimeoutError, urllib.error.URLError):
            if attempt == tries - 1:
                raise
        time.sleep(min(2 ** attempt, 8))
    raise AssertionError("unreachable")


def schedule_text(deployment: dict[str, Any]) -> str:
    out = []
    for s in deployment.get("schedules") or []:
        sc = s["schedule"]
        if "cron" in sc:
            out.append(f"cron '{sc['cron']}' {sc.get('timezone') or 'UTC'}")
        elif "interval" in sc:
            out.append(f"every {sc['interval']:g} s")
        else:
            out.append("rrule")
        if not s.get("active", True):
            out[-1] += " (paused)"
    return ", ".join(out)


def deployment_lines(api: str) -> list[str]:
    flows = {f["id"]: f["name"] for f in post(api, "/flows/filter")}
    automations = post(api, "/automations/filter")
    lines = []
    for d in sorted(post(api, "/deployments/filter"), key=lambda d: (flows.get(d["flow_id"], ""), d["name"])):
        events = sorted({e for a in automations for e in (a["trigger"].get("expect") or [])
                         if any(x.get("deployment_id") == d["id"] for x in a["actions"])})
        extra = "; ".join(filter(None, [schedule_text(d), ("on " + ", ".join(events)) if events else ""]))
        name = f"{flows.get(d['flow_id'], '?')}/{d['name']}"
        lines.append(f"{name:<38} {d['work_pool_name']}/{d['work_queue_name']}" + (f"  {extra}" if extra else ""))
    return lines


def status_lines(api: str) -> list[str]:
    flows = {f["id"]: f["name"] for f in post(api, "/flows/filter")}
    lines = []
    for pool in post(api, "/work_pools/filter"):
        workers = post(api, f"/work_pools/{pool['name']}/workers/filter")
        online = [w["name"] for w in workers if w.get("status") == "ONLINE"]
        lines.append(f"pool {pool['name']} ({pool['type']}, limit {pool['concurrency_limit']}): "
                     f"{len(online)} worker(s) online {online}")
    lines.append("deployments:")
    lines += ["  " + x for x in deployment_lines(api)]
    runs = post(api, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC", "limit": 10,
                                           "flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}}})
    lines.append("latest flow runs:" if runs else "no flow runs yet")
    lines += [f"  {r['expected_start_time'][:19]}  {r['state_type']:<10} {flows.get(r['flow_id'], '?')}/{r['name']}"
              for r in runs]
    return lines


def mark_stopped(api: str, pool: str) -> list[str]:
    """Cancel the runs of ``pool`` that were pending or running when the worker was stopped."""
    runs = post(api, "/flow_runs/filter", {
        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
        "work_pools": {"name": {"any_": [pool]}}, "limit": 200})
    lines = []
    for r in runs:
        post(api, f"/flow_runs/{r['id']}/set_state", {
            "state": {"type": "CANCELLED", "name": "Cancelled", "message": "stopped by infra/stack.sh down"},
            "force": True})
        lines.append(f"cancelled flow run {r['name']} (was {r['state_type']})")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "mark-stopped":
        for line in mark_stopped(argv[0].rstrip("/"), argv[2]):
            print(f"[stack]   {line}")
        return 0
    if len(argv) != 2 or argv[1] not in ("deployments", "status"):
        print(__doc__, file=sys.stderr)
        return 2
    api, what = argv[0].rstrip("/"), argv[1]
    lines = deployment_lines(api) if what == "deployments" else status_lines(api)
    print("\n".join(f"[stack]   {x}" for x in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
