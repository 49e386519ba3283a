"""The cluster's OpenAPI document, served by the router (and so through the ingest front) at
GET /v1/openapi.json.

The cluster serves the shard's v1 API, answered over every shard, so its document is the
shard's (quipu/shard/openapi.json) with the changes in quipu/router/openapi-cluster.json
applied when the router starts: the shard-only paths dropped, the router's answers where
they differ from a shard's (per-shard figures, 502 and 503 for a shard), the writes marked
as the ingest front's, and the /v1/cluster/ calls added. Built rather than copied, so a
change to the shard's document reaches the cluster's without anyone copying it by hand;
a fragment that no longer fits the shard's document (an operation it patches is gone, a
path it adds now exists) stops the router at startup instead of serving a wrong document.

The fragment's patches are JSON merge patches (RFC 7396: objects merge, null deletes,
other values replace) with one difference: a `required` or `parameters` list is appended
to the list it patches, so a patch names only what it adds.
"""

import copy
import json
from collections.abc import Iterator
from importlib import resources

import orjson
from aiohttp import web

OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)  # the built document, as served
FRAGMENT = "openapi-cluster.json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
APPENDED_LISTS = frozenset(("required", "parameters"))
COMPONENT_SECTIONS = ("schemas", "responses", "headers", "parameters")


class FragmentMismatch(ValueError):
    """The cluster fragment does not fit the shard's document: update the fragment."""


def cluster_document_bytes() -> bytes:
    """The document the router serves, from the two packaged files."""
    shard = json.loads(resources.files("quipu.shard").joinpath("openapi.json").read_bytes())
    fragment = json.loads(resources.files("quipu.router").joinpath(FRAGMENT).read_bytes())
    return orjson.dumps(build_cluster_document(shard, fragment), option=orjson.OPT_INDENT_2)


def build_cluster_document(shard: dict, fragment: dict) -> dict:
    """The shard's document changed as `fragment` says; neither argument is modified."""
    doc = copy.deepcopy(shard)
    doc["info"] = merge_patch(doc["info"], fragment["info"])
    doc["servers"] = copy.deepcopy(fragment["servers"])
    _set_tags(doc, fragment["tags"])
    for path in fragment["shard_only_paths"]:
        if doc["paths"].pop(path, None) is None:
            raise FragmentMismatch(f"{FRAGMENT}: shard-only path {path} is not in the shard's document")
    for path, item in fragment["paths"].items():
        if path in doc["paths"]:
            raise FragmentMismatch(f"{FRAGMENT}: path {path} is already in the shard's document")
        doc["paths"][path] = copy.deepcopy(item)
    operations = dict(_operations(doc))
    # The general rules first, so that an operation's own patch has the last word.
    for rule in fragment["every_operation"]:
        unknown = set(rule["except"]) - set(operations)
        if unknown:
            raise FragmentMismatch(f"{FRAGMENT}: every_operation excepts unknown {sorted(unknown)}")
        for operation_id, (path, method) in operations.items():
            if operation_id not in rule["except"]:
                doc["paths"][path][method] = merge_patch(doc["paths"][path][method], rule["patch"])
    for operation_id, patch in fragment["operations"].items():
        if operation_id not in operations:
            raise FragmentMismatch(f"{FRAGMENT}: operation {operation_id} is not in the document")
        path, method = operations[operation_id]
        doc["paths"][path][method] = merge_patch(doc["paths"][path][method], patch)
    doc["components"] = merge_patch(doc["components"], fragment["components"])
    _drop_unreferenced_components(doc)
    return doc


def merge_patch(target: object, patch: object) -> object:
    """RFC 7396 §2 MergePatch, except that a `required` or `parameters` list is appended to
    the target's (without repeating an entry). Returns a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in APPENDED_LISTS and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + [copy.deepcopy(v) for v in value if v not in out[key]]
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _set_tags(doc: dict, descriptions: dict[str, str]) -> None:
    """Tags keep the shard's order; a tag named in the fragment gets its description, a new
    one is added at the end."""
    tags = {tag["name"]: tag for tag in doc.get("tags", [])}
    for name, description in descriptions.items():
        tags.setdefault(name, {"name": name})["description"] = description
    doc["tags"] = list(tags.values())


def _operations(doc: dict) -> Iterator[tuple[str, tuple[str, str]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield op["operationId"], (path, method)


def _drop_unreferenced_components(doc: dict) -> None:
    """Remove schemas, responses, headers and parameters that nothing refers to any more
    (the shard-only paths' TreeHead, the shard's Health, ...), until none is left."""
    while True:
        components = doc["components"]
        rest = {k: v for k, v in doc.items() if k != "components"}
        rest["components"] = {k: v for k, v in components.items() if k not in COMPONENT_SECTIONS}
        used: set[str] = set(_refs(rest))
        for section in COMPONENT_SECTIONS:
            for name, node in components.get(section, {}).items():
                used.update(r for r in _refs(node) if r != f"#/components/{section}/{name}")
        unused = [
            (section, name)
            for section in COMPONENT_SECTIONS
            for name in components.get(section, {})
            if f"#/components/{section}/{name}" not in used
        ]
        if not unused:
            return
        for section, name in unused:
            del components[section][name]


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
