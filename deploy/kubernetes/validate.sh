#!/usr/bin/env bash
# Checks every manifest in this folder against the Kubernetes API's JSON schemas, in strict mode:
# an unknown field (a typo), a wrong type, a missing required field, or a kind or apiVersion
# without a schema fails. Then checks what the schemas cannot: kustomization.yaml lists files
# that exist, every manifest is in the kustomization's namespace, the shard Job's SHARDS equals
# its completions, the run id is the same everywhere it is written, and the few string values the
# design rests on (completionMode Indexed, podReplacementPolicy Failed, restartPolicy Never),
# which the schemas do not enumerate. The API server validates more (cross-field rules, other
# enumerations): `kubectl apply --dry-run=server -k deploy/kubernetes` against a cluster.
#
# The schemas come bundled in the PyPI package kubernetes-validate (pinned below), so validating
# needs no network. Install it once (the only step that reaches the package index):
#
#   deploy/kubernetes/validate.sh --install
#
# then, any time:
#
#   deploy/kubernetes/validate.sh            # exit 0: every manifest is valid; 1: some is not
#
# It is installed into $KUBERNETES_VALIDATE_DIR, by default
# ~/.cache/offswitch/kubernetes-validate-<version> (or under $XDG_CACHE_HOME).
set -euo pipefail

PACKAGE_VERSION=1.37.0
# The oldest Kubernetes release whose API has every field these manifests use (appArmorProfile
# came in 1.30; backoffLimitPerIndex and podReplacementPolicy are beta and on by default there),
# and the newest the package bundles.
KUBERNETES_VERSIONS=(1.30 1.37)

here=$(cd "$(dirname "$0")" && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}
lib=${KUBERNETES_VALIDATE_DIR:-$cache/offswitch/kubernetes-validate-$PACKAGE_VERSION}

if [ "${1:-}" = "--install" ]; then
    shift
    # Older pips ignore the variables they do not know.
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        python3 -m pip install --quiet --upgrade --target "$lib" "kubernetes-validate==$PACKAGE_VERSION"
fi
if [ $# -gt 0 ]; then
    echo "usage: $0 [--install]" >&2
    exit 2
fi

# The private install, else the python3's own site-packages (where .ci/run installs it).
version_in() {
    PYTHONPATH="$1" python3 -c 'import kubernetes_validate; print(kubernetes_validate.__version__)' \
        2>/dev/null || true
}
installed=$(version_in "$lib")
if [ "$installed" != "$PACKAGE_VERSION" ]; then
    lib=""
    installed=$(version_in "")
fi
if [ "$installed" != "$PACKAGE_VERSION" ]; then
    echo "kubernetes-validate $PACKAGE_VERSION is not installed${installed:+ (found $installed)};" \
        "install it once with: $0 --install" >&2
    exit 2
fi

PYTHONPATH="$lib" python3 - "$here" "${KUBERNETES_VERSIONS[@]}" <<'PY'
import glob
import os
import sys

import kubernetes_validate
import yaml

here, versions = sys.argv[1], sys.argv[2:]
problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def documents(path):
    try:
        with open(path) as file:
            return [doc for doc in yaml.safe_load_all(file) if doc is not None]
    except yaml.YAMLError as error:
        problem(os.path.basename(path), f"not YAML: {error}")
        return []


kustomization_path = os.path.join(here, "kustomization.yaml")
kustomization = (documents(kustomization_path) or [{}])[0]
if not isinstance(kustomization, dict):
    problem("kustomization.yaml", "not a mapping")
    kustomization = {}
known_kustomize_keys = {"apiVersion", "kind", "namespace", "resources", "labels"}
for key in kustomization:
    if key not in known_kustomize_keys:
        problem("kustomization.yaml", f"unexpected key {key!r} (this check knows {sorted(known_kustomize_keys)})")
if kustomization.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or kustomization.get("kind") != "Kustomization":
    problem("kustomization.yaml", "expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization")
namespace = kustomization.get("namespace")
for resource in kustomization.get("resources") or []:
    if not os.path.isfile(os.path.join(here, str(resource))):
        problem("kustomization.yaml", f"lists {resource!r}, which is not a file here")

manifests = sorted(
    path
    for pattern in ("*.yaml", "*.yml")
    for path in glob.glob(os.path.join(here, pattern))
    if os.path.basename(path) != "kustomization.yaml"
)
objects = {}
for path in manifests:
    name = os.path.basename(path)
    docs = documents(path)
    if not docs:
        problem(name, "holds no manifest")
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            problem(f"{name}#{index + 1}", "not a Kubernetes object (no kind or apiVersion)")
            continue
        metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        where = f"{name}: {doc['kind']}/{metadata.get('name', '?')}"
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path_in_doc = ".".join(str(part) for part in error.path) or "(top)"
                problem(where, f"Kubernetes {version}: {path_in_doc}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problem(where, error.message)
            except kubernetes_validate.InvalidSchemaError as error:
                problem(where, error.message)
        if namespace is not None and metadata.get("namespace") != namespace:
            problem(where, f"namespace {metadata.get('namespace')!r}, but kustomization.yaml says {namespace!r}")
        objects[(doc["kind"], metadata.get("name"))] = doc


def container_env(job):
    try:
        container = job["spec"]["template"]["spec"]["containers"][0]
    except (KeyError, IndexError, TypeError):
        return {}
    return {entry.get("name"): entry.get("value") for entry in container.get("env") or [] if isinstance(entry, dict)}


shards = objects.get(("Job", "offswitch-shards"))
merge = objects.get(("Job", "offswitch-merge"))
if shards is None or merge is None:
    problem("job.yaml, merge-job.yaml", "expected the Jobs offswitch-shards and offswitch-merge")
else:
    shard_env, merge_env = container_env(shards), container_env(merge)
    # Values the schemas do not enumerate (any string passes them) but the design rests on.
    spec = shards.get("spec") or {}
    for field, wanted in (("completionMode", "Indexed"), ("podReplacementPolicy", "Failed")):
        if spec.get(field) != wanted:
            problem("job.yaml", f"spec.{field} is {spec.get(field)!r}, expected {wanted!r}")
    if not isinstance(spec.get("backoffLimitPerIndex"), int):
        problem("job.yaml", "spec.backoffLimitPerIndex is not set: a failed shard would not be retried by index")
    for label, job in (("job.yaml", shards), ("merge-job.yaml", merge)):
        restart = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("restartPolicy")
        if restart != "Never":
            problem(label, f"spec.template.spec.restartPolicy is {restart!r}, expected 'Never' (a podFailurePolicy needs it)")
    completions = shards.get("spec", {}).get("completions")
    if str(shard_env.get("SHARDS")) != str(completions):
        problem("job.yaml", f"SHARDS is {shard_env.get('SHARDS')!r} but completions is {completions!r}: they must be equal")
    run_ids = {
        "job.yaml RUN_ID": shard_env.get("RUN_ID"),
        "merge-job.yaml RUN_ID": merge_env.get("RUN_ID"),
    }
    for label, job in (("job.yaml", shards), ("merge-job.yaml", merge)):
        run_ids[f"{label} instance label"] = (job.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/instance")
        template_labels = (job.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {})
        run_ids[f"{label} pod instance label"] = template_labels.get("app.kubernetes.io/instance")
    for index, constraint in enumerate((shards.get("spec", {}).get("template", {}).get("spec", {}) or {}).get("topologySpreadConstraints") or []):
        selector = ((constraint.get("labelSelector") or {}).get("matchLabels") or {})
        run_ids[f"job.yaml topologySpreadConstraints[{index}] instance"] = selector.get("app.kubernetes.io/instance")
    if len(set(run_ids.values())) != 1:
        problem("job.yaml, merge-job.yaml", "the run id differs: " + ", ".join(f"{k} = {v!r}" for k, v in run_ids.items()))

for line in problems:
    print(f"error: {line}")
checked = ", ".join(versions)
if problems:
    print(f"{len(problems)} problem(s) in {len(manifests) + 1} files (Kubernetes {checked}, strict)")
    sys.exit(1)
print(f"ok: {len(objects)} objects in {len(manifests)} files and kustomization.yaml are valid for Kubernetes {checked} (strict)")
PY
