#!/usr/bin/env bash
# Static checks of the deployment files: alert rules (and their unit tests), the
# PrometheusRule copy, the rendered Kubernetes manifests, the Dockerfile and compose file.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/checks/tools.sh
hash -r

echo "== promtool check rules / test rules"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml
python3 deploy/checks/sync_prometheusrule.py --check

echo "== kubernetes-validate --strict on the rendered manifests"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in base keda full; do
  kubectl kustomize "deploy/k8s/$overlay" > "$rendered/$overlay.yaml"
  # Custom resources (KEDA, prometheus-operator) have no schema here: they are reported
  # as warnings; every core resource is validated strictly.
  kubernetes-validate --strict --quiet "$rendered/$overlay.yaml"
  echo "deploy/k8s/$overlay: $(grep -c '^kind:' "$rendered/$overlay.yaml") resources valid"
done

echo "== hadolint"
hadolint Dockerfile && echo "Dockerfile: no findings"

echo "== compose"
python3 - <<'PY'
import pathlib, subprocess, sys, tempfile, yaml
root = pathlib.Path("deploy")
compose = yaml.safe_load((root / "compose.yaml").read_text())
problems = []
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith(".") and not (root / source).exists():
            problems.append(f"{name}: {source} does not exist")
    build = service.get("build")
    if build and not (root / build["context"] / "Dockerfile").exists():
        problems.append(f"{name}: no Dockerfile in {build['context']}")
config = yaml.safe_load((root / "prometheus/prometheus.yml").read_text())
config["rule_files"] = [str((root / "prometheus/alerts.yaml").resolve())]
with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
    yaml.safe_dump(config, f)
check = subprocess.run(["promtool", "check", "config", f.name], capture_output=True, text=True)
if check.returncode != 0:
    problems.append("prometheus.yml: " + check.stdout + check.stderr)
if problems:
    sys.exit("\n".join(problems))
print(f"deploy/compose.yaml: {len(compose['services'])} services, mounts and Prometheus config valid")
PY
