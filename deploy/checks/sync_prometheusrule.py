#!/usr/bin/env python3
"""Keep deploy/k8s/monitoring/prometheusrule.yaml equal to deploy/prometheus/alerts.yaml.

  sync_prometheusrule.py          rewrite the PrometheusRule from the plain rules
  sync_prometheusrule.py --check  exit 1 (saying so) when they differ
"""
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAIN = ROOT / "prometheus" / "alerts.yaml"
CRD = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/alerts.yaml by deploy/checks/sync_prometheusrule.py;\n"
    "# .ci/run fails when the two differ.\n"
)


def wanted():
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "cleanup-service",
            "namespace": "cleanup",
            "labels": {"app.kubernetes.io/part-of": "cleanup-service"},
        },
        "spec": yaml.safe_load(PLAIN.read_text()),
    }


if "--check" in sys.argv:
    if yaml.safe_load(CRD.read_text()) != wanted():
        sys.exit(f"{CRD} differs from {PLAIN}: run deploy/checks/sync_prometheusrule.py")
    print("PrometheusRule matches the plain rules")
else:
    CRD.write_text(HEADER + yaml.safe_dump(wanted(), sort_keys=False, width=120))
