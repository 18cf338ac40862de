"""Checks the deploy package without a cluster.

- Every object in deploy/kubernetes parses into the Kubernetes API's own
  models (the `kubernetes` client's), and serializes back to the same thing,
  so a misspelled or misplaced field fails; the ServiceMonitor (a CRD) gets
  its required fields checked by hand.
- The kustomization lists exactly the files there.
- The ConfigMap's cascadia.toml passes `cascadia check` (the real binary,
  given as the first argument), with its token file stood in for.

    python deploy/validate.py target/debug/cascadia
"""

import json
import pathlib
import subprocess
import sys
import tempfile

import yaml
from kubernetes import client

HERE = pathlib.Path(__file__).resolve().parent / "kubernetes"

MODELS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}


def normalized(value):
    """Drops empty values, as the client's serializer does."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def check_object(path, obj, problems):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
        spec = obj.get("spec", {})
        if not obj.get("metadata", {}).get("name") or "selector" not in spec or not spec.get("endpoints"):
            problems.append(f"{path}: a ServiceMonitor needs metadata.name, spec.selector and spec.endpoints")
        return
    model = MODELS.get(key)
    if model is None:
        problems.append(f"{path}: unexpected {key}")
        return
    api = client.ApiClient()
    try:
        parsed = api.deserialize(json.dumps(obj), model, "application/json")
    except Exception as error:  # the client raises ValueError and TypeError
        problems.append(f"{path}: {key[1]} does not parse: {error}")
        return
    back = normalized(api.sanitize_for_serialization(parsed))
    if back != normalized(obj):
        problems.append(
            f"{path}: {key[1]} has fields the API does not know:\n"
            f"  wrote {json.dumps(normalized(obj), sort_keys=True)}\n"
            f"  API   {json.dumps(back, sort_keys=True)}"
        )


def main(cascadia):
    problems = []
    files = sorted(p.name for p in HERE.glob("*.yaml") if p.name != "kustomization.yaml")
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    if sorted(kustomization.get("resources", [])) != files:
        problems.append(f"kustomization.yaml lists {kustomization.get('resources')}, the folder has {files}")
    config = None
    for name in files:
        for obj in yaml.safe_load_all((HERE / name).read_text()):
            if obj is None:
                continue
            check_object(name, obj, problems)
            if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == "cascadia-config":
                config = obj["data"]["cascadia.toml"]
    if config is None:
        problems.append("no cascadia-config ConfigMap")
    else:
        with tempfile.TemporaryDirectory() as work:
            token = pathlib.Path(work) / "token"
            token.write_text("a-token-for-the-check-only\n")
            path = pathlib.Path(work) / "cascadia.toml"
            path.write_text(config.replace("/var/run/cascadia-admin/token", str(token)))
            checked = subprocess.run([cascadia, "check", "--config", str(path)], capture_output=True, text=True)
            if checked.returncode != 0:
                problems.append(f"the ConfigMap's cascadia.toml fails `cascadia check`:\n{checked.stdout}{checked.stderr}")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"deploy/kubernetes: {len(files)} files, {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
