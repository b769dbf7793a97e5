#!/usr/bin/env python3
"""Live check of metrics, dashboard and alerts against a real Prometheus.

Starts producer-api and a worker (debug builds) on their own databases and AMQP prefix,
a real Prometheus (Debian's package) scraping both every second with the alert rules
loaded, runs a few tasks of both kinds, then checks:
  - `promtool check metrics` accepts both /metrics scrapes;
  - every query of deploy/grafana/cleanup-service.json evaluates without error, and the
    dashboard's main panels return data;
  - every alert expression evaluates without error, and Prometheus reports every rule
    healthy.
Cleans up whatever it created. Exit code 0 when everything holds.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("TARGET_DIR") or ROOT / "target")
PG = os.environ.get("CHECK_PG", "postgres://postgres@127.0.0.1:5432")
AMQP = os.environ.get("CHECK_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")
TOKEN = "observability-check-token-0123456789"
SIGNING_KEYS = "obs-check:observability-check-signing-secret-0123456789"
# Panels that must show data after a short run with a few tasks.
MAIN_PANELS = [
    "Tasks finished by outcome",
    "Tasks enqueued",
    "Task duration (p50, p95)",
    "Queue backlog",
    "Outbox backlog",
    "Rows deleted",
    "Files deleted and bytes freed",
    "Retention: oldest eligible age after the last run",
    "Time since the last successful cleanup",
    "Tasks in flight and workers connected",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw and response.headers.get_content_type().endswith("json") else raw.decode()


def wait_for(what, check, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def psql(db, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", f"{PG}/{db}", "-c", sql], check=True, stdout=subprocess.DEVNULL)


def main():
    suffix = uuid.uuid4().hex[:10]
    ledger, runs_db, prefix = f"obs_ledger_{suffix}", f"obs_runs_{suffix}", f"obs-{suffix}"
    work = pathlib.Path(tempfile.mkdtemp(prefix="cleanup-obs-"))
    processes = []
    failures = []
    try:
        for db in (ledger, runs_db):
            psql("postgres", f'CREATE DATABASE "{db}"')
        subprocess.run(["psql", "-q", f"{PG}/{runs_db}", "-f", str(ROOT / "deploy/sql/runs-schema.sql")], check=True, stdout=subprocess.DEVNULL)
        psql(runs_db, "INSERT INTO runs (status, finished_at) SELECT 'succeeded', now() - interval '10 days' FROM generate_series(1, 500)")
        scratch = work / "scratch"
        scratch.mkdir()
        old = time.time() - 3 * 86400
        for i in range(30):
            f = scratch / f"old-{i}.tmp"
            f.write_bytes(b"x" * 100)
            os.utime(f, (old, old))

        api_port, worker_port, prom_port = free_port(), free_port(), free_port()
        env = dict(os.environ, AMQP_URL=AMQP, AMQP_PREFIX=prefix, LOG_LEVEL="warn", TASK_SIGNING_KEYS=SIGNING_KEYS)
        logs = open(work / "services.log", "w")
        processes.append(subprocess.Popen(
            [str(TARGET / "debug/producer-api")],
            env=dict(env, DATABASE_URL=f"{PG}/{ledger}", API_TOKENS=TOKEN, LISTEN_ADDR=f"127.0.0.1:{api_port}"),
            stdout=logs, stderr=logs))
        processes.append(subprocess.Popen(
            [str(TARGET / "debug/worker")],
            env=dict(env, RUNS_DATABASE_URL=f"{PG}/{runs_db}", TEMP_ROOTS=f"scratch={scratch}",
                     METRICS_ADDR=f"127.0.0.1:{worker_port}", WORKER_HEARTBEAT_INTERVAL="1s"),
            stdout=logs, stderr=logs))
        api = f"http://127.0.0.1:{api_port}"
        wait_for("producer-api ready", lambda: http("GET", f"{api}/readyz")["ready"])
        wait_for("worker ready", lambda: http("GET", f"http://127.0.0.1:{worker_port}/readyz")["ready"])

        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "deploy/prometheus/alerts.yaml")],
            "scrape_configs": [
                {"job_name": "producer-api", "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]},
                {"job_name": "worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        processes.append(subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=logs, stderr=logs))
        prom = f"http://127.0.0.1:{prom_port}"
        wait_for("Prometheus scraping both targets", lambda: all(
            t["health"] == "up" for t in http("GET", f"{prom}/api/v1/targets")["data"]["activeTargets"])
            and len(http("GET", f"{prom}/api/v1/targets")["data"]["activeTargets"]) == 2)

        tasks = [
            ("/maintenance/cleanup-runs", {"max_age_hours": 24, "dry_run": True}),
            ("/maintenance/cleanup-runs", {"max_age_hours": 24, "batch_size": 100}),
            ("/maintenance/cleanup-temp-files", {"max_age_hours": 24, "dry_run": True}),
            ("/maintenance/cleanup-temp-files", {"max_age_hours": 24, "root": "scratch"}),
            ("/maintenance/cleanup-temp-files", {"max_age_hours": 24, "root": "nowhere"}),
        ]
        ids = [http("POST", api + path, body, TOKEN)["task_id"] for path, body in tasks]
        wait_for("every task finished", lambda: all(
            http("GET", f"{api}/tasks/{i}", token=TOKEN)["status"] in ("succeeded", "failed", "dead") for i in ids))
        time.sleep(8)  # a few scrapes and rule evaluations after the tasks

        for name, port in (("producer-api", api_port), ("worker", worker_port)):
            body = http("GET", f"http://127.0.0.1:{port}/metrics")
            check = subprocess.run(["promtool", "check", "metrics"], input=body.encode(), capture_output=True)
            if check.returncode != 0:
                failures.append(f"promtool check metrics on {name}: {check.stdout.decode()}{check.stderr.decode()}")
            else:
                print(f"promtool check metrics: {name} ok")

        def query(expr):
            url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                return http("GET", url)
            except urllib.error.HTTPError as e:
                return json.loads(e.read())

        dashboard = json.loads((ROOT / "deploy/grafana/cleanup-service.json").read_text())
        for panel in dashboard["panels"]:
            data = False
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m")
                answer = query(expr)
                if answer.get("status") != "success":
                    failures.append(f"panel '{panel['title']}': {expr}: {answer.get('error')}")
                    continue
                data = data or bool(answer["data"]["result"])
            if panel["title"] in MAIN_PANELS and not data:
                failures.append(f"main panel '{panel['title']}' returned no data")
            print(f"panel '{panel['title']}': {'data' if data else 'no data'}")
        missing = set(MAIN_PANELS) - {p["title"] for p in dashboard["panels"]}
        if missing:
            failures.append(f"main panels missing from the dashboard: {missing}")

        rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                answer = query(rule["expr"])
                if answer.get("status") != "success":
                    failures.append(f"alert {rule['alert']}: {answer.get('error')}")
                else:
                    print(f"alert {rule['alert']}: evaluates ({len(answer['data']['result'])} series)")
        loaded = http("GET", f"{prom}/api/v1/rules")["data"]["groups"]
        for group in loaded:
            for rule in group["rules"]:
                if rule.get("health") != "ok":
                    failures.append(f"Prometheus reports rule {rule['name']}: {rule.get('health')} {rule.get('lastError')}")
        print(f"{sum(len(g['rules']) for g in loaded)} rules loaded in Prometheus")
    finally:
        for p in reversed(processes):
            p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for db in (ledger, runs_db):
            subprocess.run(["psql", "-q", f"{PG}/postgres", "-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'], stdout=subprocess.DEVNULL)
        queues = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True).stdout.split()
        for q in queues:
            if q.startswith(prefix + "."):
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", q], stdout=subprocess.DEVNULL)
        # rabbitmqctl has no delete_exchange, and rabbitmqadmin needs the management
        # plugin: the broker's own function, through rabbitmqctl eval.
        exchanges = subprocess.run(["rabbitmqctl", "-q", "list_exchanges", "name"], capture_output=True, text=True).stdout.split()
        for name in exchanges:
            if name.startswith(prefix + "."):
                erl = f'rabbit_exchange:delete(rabbit_misc:r(<<"/">>, exchange, <<"{name}">>), false, <<"observability-check">>).'
                deleted = subprocess.run(["rabbitmqctl", "-q", "eval", erl], capture_output=True, text=True)
                if deleted.stdout.strip() != "ok":
                    print(f"observability check: exchange {name} left behind: {deleted.stdout}{deleted.stderr}".strip(), file=sys.stderr)
        if failures:
            print((work / "services.log").read_text()[-4000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("\n".join(["observability check FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print("observability check passed")


if __name__ == "__main__":
    main()
