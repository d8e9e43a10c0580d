#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (scripts/check-deploy runs this
with .venv-deploy's Python).

For every object in every file given:
  * built-in kinds must pass kubernetes-validate --strict (unknown fields
    refused) for each Kubernetes version asked for;
  * custom resources (cert-manager, Prometheus Operator) have no schema in
    kubernetes-validate: they go to the --crd-validator command (the
    schemas of their published CRDs, deploy/crd-check/validate.mjs), and
    those it has no schema for, or all of them without one, are listed as
    skipped, by kind;
  * an object of any other kind without a schema is an error (a typo in
    apiVersion or kind, or a kind newer than the oldest version supported);
  * every checkov skip annotation (checkov.io/skipN) must say why:
    "CKV_ID=reason".
The Dockerfiles given with --dockerfile must give a reason for every
checkov:skip comment as well.

Exit status 0 when all of that holds, 1 otherwise.
"""

import argparse
import json
import re
import shlex
import subprocess
import sys

import kubernetes_validate.utils as kv

# API groups whose kinds are custom resources: installed into a cluster with
# their operator, not part of Kubernetes.
CUSTOM_GROUPS = ("cert-manager.io", "monitoring.coreos.com")

SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")
SKIP_VALUE = re.compile(r"^(CKV2?_[A-Z0-9_]+)=(.{10,})$", re.S)
DOCKER_SKIP = re.compile(r"checkov:skip=(CKV2?_[A-Z0-9_]+)(?::(.*))?$")


def group_of(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def name_of(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


def check_skip_reasons(doc, problems):
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    for key, value in annotations.items():
        if SKIP_ANNOTATION.match(key) and not SKIP_VALUE.match(str(value)):
            problems.append(
                f"{name_of(doc)}: annotation {key}={value!r} skips a checkov check "
                "without a reason (write CKV_ID=why)"
            )


def check_dockerfile(path, problems):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            m = DOCKER_SKIP.search(line)
            if m and len((m.group(2) or "").strip()) < 10:
                problems.append(
                    f"{path}:{number}: checkov:skip={m.group(1)} without a reason "
                    "(write checkov:skip=ID: why)"
                )


def check_custom(command, docs, problems):
    """Runs the CRD validator on the custom resources; returns the kinds it
    had no schema for."""
    result = subprocess.run(
        shlex.split(command),
        input=json.dumps([doc for _, doc in docs]),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        problems.append(f"{command} failed: {result.stderr.strip()}")
        return set()
    unchecked = set()
    for line in result.stdout.splitlines():
        verdict = json.loads(line)
        path, doc = docs[verdict["index"]]
        if not verdict["checked"]:
            unchecked.add((f"{doc['kind']} ({doc['apiVersion']})", path))
        for error in verdict["errors"]:
            problems.append(f"{path}: {name_of(doc)} does not match its CRD schema: {error}")
    return unchecked


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="rendered manifests (YAML)")
    parser.add_argument(
        "-k",
        "--kubernetes-version",
        action="append",
        required=True,
        help="a version to validate against; 'latest' is the newest kubernetes-validate knows",
    )
    parser.add_argument(
        "--crd-validator",
        metavar="COMMAND",
        help="validates custom resources: a JSON array on stdin, a JSON verdict per line out",
    )
    parser.add_argument("--dockerfile", action="append", default=[])
    args = parser.parse_args()

    versions = [kv.latest_version() if v == "latest" else v for v in args.kubernetes_version]
    problems = []
    objects = 0
    skipped = {}
    custom = []
    for path in args.files:
        for doc in kv.resources_from_file(path):
            objects += 1
            check_skip_reasons(doc, problems)
            kind, api_version = doc.get("kind"), doc.get("apiVersion", "")
            for version in versions:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    where = ".".join(str(p) for p in e.path) or "(top)"
                    problems.append(
                        f"{path}: {name_of(doc)} is invalid for Kubernetes {e.version}: "
                        f"{where}: {e.message}"
                    )
                except kv.SchemaNotFoundError:
                    if group_of(api_version) in CUSTOM_GROUPS:
                        if version == versions[0]:
                            custom.append((path, doc))
                    else:
                        problems.append(
                            f"{path}: {name_of(doc)}: Kubernetes {version} has no kind "
                            f"{kind} in {api_version}"
                        )
    unchecked = {(f"{d['kind']} ({d['apiVersion']})", p) for p, d in custom}
    if args.crd_validator and custom:
        unchecked = check_custom(args.crd_validator, custom, problems)
    for kind, path in unchecked:
        skipped.setdefault(kind, set()).add(path)
    for path in args.dockerfile:
        check_dockerfile(path, problems)

    shown = ", ".join(versions)
    print(
        f"validate-manifests: {objects} objects in {len(args.files)} file(s), "
        f"strict schemas of Kubernetes {shown}"
    )
    crd_checked = sorted({d["kind"] for _, d in custom} - {k.split(" ")[0] for k in skipped})
    if crd_checked:
        print(
            "validate-manifests: custom resources checked against their CRD schemas "
            f"(unknown fields not refused): {', '.join(crd_checked)}"
        )
    for kind, paths in sorted(skipped.items()):
        print(
            f"validate-manifests: SKIPPED by kind: {kind}, a custom resource with no "
            f"schema here ({', '.join(sorted(paths))})"
        )
    for problem in problems:
        print(f"validate-manifests: ERROR {problem}")
    if problems:
        print(f"validate-manifests: {len(problems)} problem(s)")
        return 1
    print("validate-manifests: every object is valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
