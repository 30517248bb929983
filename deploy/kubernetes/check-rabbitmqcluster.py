#!/usr/bin/env python3
"""Check RabbitmqCluster resources (rabbitmq.com/v1beta1) offline.

kubernetes-validate knows only built-in kinds, and the operator's CRD is not
available offline, so this holds the part of the CRD's schema the manifests
use, strictly (unknown fields are errors, as with --strict), plus the rules
this project relies on: an odd number of at least three nodes, so quorum
queues keep a majority through the loss of one node.

Usage: check-rabbitmqcluster.py RENDERED.yaml   (other kinds are ignored)
"""
import sys

import jsonschema
import yaml

QUANTITY = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}]}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    },
}
OBJECT = {"type": "object"}  # passed through to Kubernetes types as is

SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "rabbitmq.com/v1beta1"},
        "kind": {"const": "RabbitmqCluster"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "namespace": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["replicas"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 3, "not": {"multipleOf": 2}},
                "image": {"type": "string"},
                "imagePullSecrets": {"type": "array"},
                "service": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
                        "annotations": {"type": "object"},
                        "ipFamilyPolicy": {"type": "string"},
                    },
                },
                "persistence": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "storageClassName": {"type": "string"},
                        "storage": QUANTITY,
                    },
                },
                "resources": RESOURCES,
                "affinity": OBJECT,
                "tolerations": {"type": "array"},
                "rabbitmq": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "additionalPlugins": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
                        "additionalConfig": {"type": "string", "maxLength": 2000},
                        "advancedConfig": {"type": "string", "maxLength": 100000},
                        "envConfig": {"type": "string", "maxLength": 100000},
                        "erlangInetConfig": {"type": "string", "maxLength": 2000},
                    },
                },
                "tls": OBJECT,
                "override": OBJECT,
                "secretBackend": OBJECT,
                "skipPostDeploySteps": {"type": "boolean"},
                "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
                "delayStartSeconds": {"type": "integer", "minimum": 0},
                "autoEnableAllFeatureFlags": {"type": "boolean"},
            },
        },
    },
}


def main(path: str) -> int:
    docs = [d for d in yaml.safe_load_all(open(path)) if d and d.get("kind") == "RabbitmqCluster"]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    bad = 0
    for doc in docs:
        name = doc.get("metadata", {}).get("name", "?")
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            where = "/".join(str(p) for p in e.path) or "(root)"
            print(f"ERROR rabbitmqcluster/{name} {where}: {e.message}", file=sys.stderr)
        if errors:
            bad += 1
        else:
            print(f"ok  rabbitmqcluster/{name} (rabbitmq.com/v1beta1, {doc['spec']['replicas']} replicas)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
