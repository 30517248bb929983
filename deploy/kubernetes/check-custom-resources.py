#!/usr/bin/env python3
"""Check the operators' custom resources offline: RabbitmqCluster
(rabbitmq.com/v1beta1) and CloudNativePG's Cluster and Database
(postgresql.cnpg.io/v1).

kubernetes-validate knows only built-in kinds, and the operators' CRDs are
not available offline, so this holds the part of each CRD's schema the
manifests use, strictly (unknown fields are errors, as with --strict), plus
the rules this project relies on:

- RabbitmqCluster: an odd number of at least three nodes, so quorum queues
  keep a majority through the loss of one node;
- Cluster: at least three instances, fewer synchronous standbys than
  standbys, so commits go on through the loss of one instance; every
  managed login role has a password Secret;
- Database: its cluster is a Cluster of the same manifests, and its owner
  one of that cluster's managed roles.

Usage: check-custom-resources.py RENDERED.yaml   (other kinds are ignored)
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
NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
# A PostgreSQL identifier the operator need not quote.
PG_NAME = {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$", "maxLength": 63}
REFERENCE = {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {"name": NAME}}
ENSURE = {"enum": ["present", "absent"]}


def resource(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": NAME,
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    "namespace": {"type": "string"},
                },
                "additionalProperties": False,
            },
            "spec": spec,
        },
    }


RABBITMQ_CLUSTER = resource("rabbitmq.com/v1beta1", "RabbitmqCluster", {
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
            "properties": {"storageClassName": {"type": "string"}, "storage": QUANTITY},
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
})

ROLE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": PG_NAME,
        "ensure": ENSURE,
        "comment": {"type": "string"},
        "login": {"type": "boolean"},
        "superuser": {"type": "boolean"},
        "createdb": {"type": "boolean"},
        "createrole": {"type": "boolean"},
        "inherit": {"type": "boolean"},
        "replication": {"type": "boolean"},
        "bypassrls": {"type": "boolean"},
        "connectionLimit": {"type": "integer", "minimum": -1},
        "validUntil": {"type": "string"},
        "inRoles": {"type": "array", "items": {"type": "string"}},
        "passwordSecret": REFERENCE,
        "disablePassword": {"type": "boolean"},
    },
    # A login role signs in with the password of its Secret.
    "if": {"properties": {"login": {"const": True}}, "required": ["login"]},
    "then": {"required": ["passwordSecret"]},
}

CNPG_CLUSTER = resource("postgresql.cnpg.io/v1", "Cluster", {
    "type": "object",
    "additionalProperties": False,
    "required": ["instances", "storage"],
    "properties": {
        "instances": {"type": "integer", "minimum": 3},
        "imageName": {"type": "string", "pattern": ":[0-9]"},  # a pinned version
        "description": {"type": "string"},
        "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
        "primaryUpdateMethod": {"enum": ["switchover", "restart"]},
        "storage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["size"],
            "properties": {"size": QUANTITY, "storageClass": {"type": "string"}, "resizeInUseVolumes": {"type": "boolean"}},
        },
        "walStorage": OBJECT,
        "resources": RESOURCES,
        "affinity": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enablePodAntiAffinity": {"type": "boolean"},
                "podAntiAffinityType": {"enum": ["preferred", "required"]},
                "topologyKey": {"type": "string"},
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "tolerations": {"type": "array"},
                "nodeAffinity": OBJECT,
                "additionalPodAntiAffinity": OBJECT,
                "additionalPodAffinity": OBJECT,
            },
        },
        "postgresql": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                "pg_hba": {"type": "array", "items": {"type": "string"}},
                "synchronous": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["method", "number"],
                    "properties": {
                        "method": {"enum": ["any", "first"]},
                        "number": {"type": "integer", "minimum": 1},
                        "dataDurability": {"enum": ["required", "preferred"]},
                        "maxStandbyNamesFromCluster": {"type": "integer", "minimum": 0},
                        "standbyNamesPre": {"type": "array", "items": {"type": "string"}},
                        "standbyNamesPost": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
        "managed": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"roles": {"type": "array", "items": ROLE}, "services": OBJECT},
        },
        "bootstrap": OBJECT,
        "backup": OBJECT,
        "monitoring": OBJECT,
        "certificates": OBJECT,
        "inheritedMetadata": OBJECT,
        "enableSuperuserAccess": {"type": "boolean"},
        "superuserSecret": REFERENCE,
        "imagePullSecrets": {"type": "array"},
        "priorityClassName": {"type": "string"},
        "stopDelay": {"type": "integer", "minimum": 0},
        "switchoverDelay": {"type": "integer", "minimum": 0},
        "failoverDelay": {"type": "integer", "minimum": 0},
    },
})

CNPG_DATABASE = resource("postgresql.cnpg.io/v1", "Database", {
    "type": "object",
    "additionalProperties": False,
    "required": ["cluster", "name", "owner"],
    "properties": {
        "cluster": REFERENCE,
        "name": PG_NAME,
        "owner": PG_NAME,
        "ensure": ENSURE,
        "databaseReclaimPolicy": {"enum": ["retain", "delete"]},
        "encoding": {"type": "string"},
        "locale": {"type": "string"},
        "template": {"type": "string"},
        "connectionLimit": {"type": "integer", "minimum": -1},
        "allowConnections": {"type": "boolean"},
        "tablespace": {"type": "string"},
        "extensions": {"type": "array"},
        "schemas": {"type": "array"},
    },
})

SCHEMAS = {"RabbitmqCluster": RABBITMQ_CLUSTER, "Cluster": CNPG_CLUSTER, "Database": CNPG_DATABASE}


def rules(doc: dict, clusters: dict) -> list[str]:
    """The checks a schema cannot express, across resources."""
    spec = doc["spec"]
    if doc["kind"] == "Cluster":
        sync = spec.get("postgresql", {}).get("synchronous")
        if sync and sync["number"] >= spec["instances"] - 1:
            return [f"synchronous.number {sync['number']} leaves no standby to lose out of {spec['instances']} instances"]
    if doc["kind"] == "Database":
        cluster = clusters.get(spec["cluster"]["name"])
        if cluster is None:
            return [f"cluster {spec['cluster']['name']} is not a Cluster of these manifests"]
        roles = {r["name"] for r in cluster["spec"].get("managed", {}).get("roles", [])}
        if spec["owner"] not in roles:
            return [f"owner {spec['owner']} is not a managed role of cluster {spec['cluster']['name']}"]
    return []


def main(path: str) -> int:
    docs = [d for d in yaml.safe_load_all(open(path)) if d and d.get("kind") in SCHEMAS]
    clusters = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Cluster"}
    bad = 0
    for doc in docs:
        kind, name = doc["kind"], doc.get("metadata", {}).get("name", "?")
        errors = sorted(jsonschema.Draft202012Validator(SCHEMAS[kind]).iter_errors(doc), key=lambda e: list(e.path))
        messages = [f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors]
        if not errors:
            messages = rules(doc, clusters)
        for message in messages:
            print(f"ERROR {kind.lower()}/{name} {message}", file=sys.stderr)
        if messages:
            bad += 1
        else:
            print(f"ok  {kind.lower()}/{name} ({doc['apiVersion']})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
