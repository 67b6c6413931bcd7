#!/usr/bin/python3
"""Validate every JSON document reachable from an OCI layout's index.json against the OCI schemas.

Usage: validate_oci.py SCHEMA_DIR LAYOUT_DIR. Prints one line per document; exits 1 on any failure.
"""
import json
import os
import sys

import jsonschema

schema_dir, layout = sys.argv[1], sys.argv[2]
BASE = "http://oci-schemas.invalid/"


def strip_ids(node):
    # Nested draft-4 `id`s would move the resolution scope onto remote URLs; the schemas
    # reference each other by file name, so resolve everything against one local base.
    if isinstance(node, dict):
        return {k: strip_ids(v) for k, v in node.items() if not (k == "id" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_ids(v) for v in node]
    return node


store = {}
for name in os.listdir(schema_dir):
    if name.endswith(".json"):
        with open(os.path.join(schema_dir, name)) as f:
            store[BASE + name] = strip_ids(json.load(f))


def no_network(uri):
    raise RuntimeError(f"schema reference {uri} is not local")


def schema(name):
    return store[BASE + name]


def check(doc, name, label):
    s = schema(name)
    resolver = jsonschema.RefResolver(
        base_uri=BASE + name, referrer=s, store=store, handlers={"http": no_network, "https": no_network}
    )
    jsonschema.Draft4Validator(s, resolver=resolver).validate(doc)
    print(f"ok {label} ({name})")


def blob(digest):
    algo, hexd = digest.split(":")
    with open(os.path.join(layout, "blobs", algo, hexd), "rb") as f:
        return json.load(f)


failed = False
try:
    with open(os.path.join(layout, "oci-layout")) as f:
        check(json.load(f), "image-layout-schema.json", "oci-layout")
    with open(os.path.join(layout, "index.json")) as f:
        top = json.load(f)
    check(top, "image-index-schema.json", "index.json")
    todo = list(top["manifests"])
    seen = set()
    while todo:
        d = todo.pop()
        if d["digest"] in seen:
            continue
        seen.add(d["digest"])
        doc = blob(d["digest"])
        if d["mediaType"].endswith("image.index.v1+json"):
            check(doc, "image-index-schema.json", d["digest"])
            todo.extend(doc["manifests"])
        else:
            check(doc, "image-manifest-schema.json", d["digest"])
            check(blob(doc["config"]["digest"]), "config-schema.json", doc["config"]["digest"])
except jsonschema.ValidationError as e:
    print(f"INVALID: {e.message} at {list(e.absolute_path)}")
    failed = True
sys.exit(1 if failed else 0)
