"""Invariants of the rendered chart that schemas cannot express.

Every Deployment is hardened (non-root, read-only root filesystem with a /tmp emptyDir, no
privilege escalation), has startup, liveness (/healthz, no dependency checks) and readiness
(/readyz) probes, takes secrets only from Secrets, and requests well-formed quantities. A
Deployment scaled by an HPA or a KEDA ScaledObject has no spec.replicas. The worker's
grace period exceeds its shutdown grace. Every component that mounts the shared storage
mounts the same claim.
"""

import re
import sys

import yaml

QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
SECRET_ENV = {"KILN_REDIS__URL", "KILN_AUTH__TOKENS", "KILN_GITHUB__WEBHOOK_SECRET", "KILN_GITHUB__TOKEN",
              "KILN_ELASTICSEARCH__PASSWORD", "KILN_ELASTICSEARCH__API_KEY"}


def main(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    errors = []
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")}
    claims = set()
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        spec = d["spec"]
        pod = spec["template"]["spec"]
        err = lambda m: errors.append(f"{name}: {m}")
        if name in scaled and "replicas" in spec:
            err("spec.replicas is set although an autoscaler owns the replica count")
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            err("pod securityContext.runAsNonRoot is not true")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem"):
                err("readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                err("allowPrivilegeEscalation is not false")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
                err("/tmp is not an emptyDir")
            for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = c.get(probe, {}).get("httpGet", {}).get("path")
                if got != path:
                    err(f"{probe} path is {got!r}, expected {path}")
            for kind in ("requests", "limits"):
                for res, q in c.get("resources", {}).get(kind, {}).items():
                    if not QUANTITY.match(str(q)):
                        err(f"resources.{kind}.{res} {q!r} is not a quantity")
            env = {e["name"]: e for e in c.get("env", [])}
            for k in SECRET_ENV & env.keys():
                if "value" in env[k]:
                    err(f"{k} is a plain value; it must come from a Secret")
            if "KILN_WORKER__SHUTDOWN_GRACE_SECS" in env:
                grace = int(env["KILN_WORKER__SHUTDOWN_GRACE_SECS"]["value"])
                if pod.get("terminationGracePeriodSeconds", 30) <= grace:
                    err("terminationGracePeriodSeconds does not exceed the worker's shutdown grace")
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                claims.add(v["persistentVolumeClaim"]["claimName"])
    if len(claims) > 1:
        errors.append(f"components mount different storage claims: {sorted(claims)}")
    for e in errors:
        print(f"FAIL {e}")
    print(f"policy: {0 if errors else 1} passed, {1 if errors else 0} failed ({path})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
