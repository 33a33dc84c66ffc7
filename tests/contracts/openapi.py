"""A provider's published OpenAPI 3.1 document as a test oracle: requests and answers checked against it.

OpenAPI 3.1 schema objects are JSON Schema 2020-12, so the `jsonschema` library validates them as they are;
`#/components/...` references resolve inside the stored document through a `referencing` registry. Checked:
the body of a request (JSON, or the fields of a multipart form), its query and header parameters and its
credentials (the document's `security`), and the body and media type of an answer. Two readings of the
documents, both kept narrow: the OpenAPI 3.0 keyword `nullable: true`, which Replicate's 3.1 document still
uses, admits null; and an error status a document does not list (no `default` either) is not checked, since
the document says nothing about it. `format` is an annotation, as JSON Schema 2020-12 makes it by default.
"""

from __future__ import annotations

import contextlib
import json
import re
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from jsonschema import Draft202012Validator, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

HERE = Path(__file__).resolve().parent
DOC_URI = "urn:lora-gym:openapi"
_TYPE = Draft202012Validator.VALIDATORS["type"]


def _type_or_nullable(validator, types, instance, schema):
    if instance is None and schema.get("nullable") is True:
        return
    yield from _TYPE(validator, types, instance, schema)


Validator = validators.extend(Draft202012Validator, {"type": _type_or_nullable})


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _parts(ref: str) -> list[str]:
    """A local `$ref` (#/a/b~1c) as its unescaped parts."""
    return [p.replace("~1", "/").replace("~0", "~") for p in ref.removeprefix("#/").split("/")]


def _coerce(raw: str, schema: dict):
    """A query or header value (text) as the type its schema names, where it parses as one."""
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
    except ValueError:
        return raw
    if kind == "boolean" and raw in ("true", "false"):
        return raw == "true"
    return raw


class OpenAPIContract:
    def __init__(self, path: Path):
        self.doc = json.loads(Path(path).read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)
        self.templates = [(re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", p) + "$"), p) for p in self.doc["paths"]]

    @property
    def source(self) -> dict:
        return self.doc["x-lora-gym-source"]

    def operation(self, method: str, path: str) -> tuple[str, dict] | None:
        """(path template, operation object) for a concrete path such as /v2/pods/pod7."""
        for pattern, template in self.templates:
            op = self.doc["paths"][template].get(method.lower()) if pattern.match(path) else None
            if op:
                return template, op
        return None

    def _resolve(self, obj: dict) -> dict:
        while "$ref" in obj:
            node = self.doc
            for part in _parts(obj["$ref"]):
                node = node[part]
            obj = node
        return obj

    def _resolve_parts(self, parts) -> dict:
        return self._resolve({"$ref": "#/" + _pointer(*parts)})

    def _problems(self, schema: dict, value) -> list[str]:
        validator = Validator(schema, registry=self.registry)
        return [f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in validator.iter_errors(value)]

    def _at(self, *parts: str) -> dict:
        return {"$ref": f"{DOC_URI}#/{_pointer(*parts)}"}

    def _form(self, schema: dict, parts: dict) -> dict:
        """A multipart form's fields as the schema's object: JSON parts parsed, file content as a stand-in."""
        props = self._resolve(schema).get("properties", {})
        fields = {}
        for name, value in parts.items():
            prop = self._resolve(props.get(name, {}))
            if prop.get("format") == "binary":
                fields[name] = f"<{len(value)} bytes>"
                continue
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if prop.get("type") in ("object", "array"):
                with contextlib.suppress(ValueError):
                    text = json.loads(text)
            fields[name] = text
        return fields

    def request_problems(self, method: str, path: str, body, media: str = "application/json") -> list[str]:
        """body: parsed JSON, or {field: bytes} for a multipart form; None when the request has none."""
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path} is not an operation of the document"]
        template, op = found
        request = self._resolve(op.get("requestBody", {}))
        content, media = request.get("content", {}), media.split(";")[0].strip()
        if body is None:
            return [f"{method} {template} needs a body"] if request.get("required") else []
        if media not in content:
            return [f"{method} {template} takes {sorted(content) or 'no body'}, not {media or 'untyped'!r}"]
        at = self._at("paths", template, method.lower(), "requestBody", "content", media, "schema")
        if "$ref" in op["requestBody"]:
            at = self._at(*_parts(op["requestBody"]["$ref"]), "content", media, "schema")
        if media == "multipart/form-data":
            body = self._form(content[media]["schema"], body)
        return [f"{method} {template} request {p}" for p in self._problems(at, body)]

    def parameter_problems(self, method: str, path: str, query: dict[str, list[str]], headers) -> list[str]:
        """The query string ({name: [values]}) and header parameters against those the operation declares,
        and the credentials against the document's security requirement (HTTP bearer)."""
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path} is not an operation of the document"]
        template, op = found
        headers = {k.lower(): v for k, v in headers.items()}
        declared = {}  # (in, name) -> (parameter object, where it is in the document)
        for base in (("paths", template), ("paths", template, method.lower())):
            for i, param in enumerate(self._resolve_parts(base).get("parameters", [])):
                where = _parts(param["$ref"]) if "$ref" in param else [*base, "parameters", i]
                param = self._resolve(param)
                name = param["name"].lower() if param["in"] == "header" else param["name"]
                declared[(param["in"], name)] = param, [str(w) for w in where]
        wrong = [f"{method} {template} has no query parameter {name!r}" for name in query
                 if ("query", name) not in declared]
        for (where, name), (param, at) in declared.items():
            schema = self._resolve(param.get("schema", {}))
            if where == "query":
                values = query.get(name)
            elif where == "header":
                values = [headers[name]] if headers.get(name) is not None else None
            else:
                continue
            if values is None:
                wrong += [f"{method} {template} needs {where} parameter {name!r}"] if param.get("required") else []
                continue
            if schema.get("type") == "array":
                values = values if param.get("explode", True) else values[-1].split(",")
                value = [_coerce(v, self._resolve(schema.get("items", {}))) for v in values]
            elif len(values) > 1:
                wrong.append(f"{method} {template} {where} parameter {name!r} given {len(values)} times")
                continue
            else:
                value = _coerce(values[0], schema)
            wrong += [f"{method} {template} {where} parameter {name!r}: {p.split(': ', 1)[1]}"
                      for p in self._problems(self._at(*at, "schema"), value)]
        return wrong + self._auth_problems(method, template, op, headers)

    def _auth_problems(self, method: str, template: str, op: dict, headers) -> list[str]:
        requirements = op.get("security", self.doc.get("security", []))
        schemes = self.doc.get("components", {}).get("securitySchemes", {})
        if not requirements or {} in requirements:
            return []
        for requirement in requirements:
            kinds = [schemes.get(name, {}) for name in requirement]
            if all(k.get("type") == "http" and k.get("scheme", "").lower() == "bearer" for k in kinds):
                auth = headers.get("authorization") or ""
                if auth[:7].lower() == "bearer " and auth[7:].strip():
                    return []
        return [f"{method} {template} carries no credentials the document accepts (Authorization: Bearer)"]

    def response_problems(self, method: str, path: str, status: int, content_type: str, body) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path} is not an operation of the document"]
        template, op = found
        responses = op["responses"]
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            return [] if status >= 400 else [f"{method} {template} does not answer {status}"]
        response = self._resolve(responses[key])
        media = content_type.split(";")[0].strip()
        content = response.get("content", {})
        if not content:
            return [] if body in (None, b"", "") else [f"{method} {template} {status} has a body, the document none"]
        if media not in content:
            return [f"{method} {template} {status} is {media!r}, the document says {sorted(content)}"]
        if not media.endswith("json"):
            return []
        ref = responses[key].get("$ref")
        base = _parts(ref) if ref else ["paths", template, method.lower(), "responses", key]
        at = self._at(*base, "content", media, "schema")
        return [f"{method} {template} {status} response {p}" for p in self._problems(at, body)]

    # --- what a loopback fake sends and receives, in the shapes its handler has --------------------------

    def sent_problems(self, method: str, path: str, handler, body) -> list[str]:
        """Problems with one request a fake received: its body, query parameters and headers."""
        query = parse_qs(urlsplit(handler.path).query, keep_blank_values=True)
        return (self.request_problems(method, path, body, handler.headers.get("Content-Type", "")) +
                self.parameter_problems(method, path, query, handler.headers))

    def answer_problems(self, method: str, path: str, status: int, headers: dict, body) -> list[str]:
        """Problems with one answer a fake gives: a dict/list goes out as JSON, bytes as their Content-Type."""
        media = headers.get("Content-Type", "application/json" if isinstance(body, dict | list) else "")
        answered = json.loads(body) if isinstance(body, bytes) and media.endswith("json") else body
        return self.response_problems(method, path, status, media, answered)


@cache
def runpod() -> OpenAPIContract:
    """RunPod's REST API v2, trimmed to what the backend and the pod's entrypoint call (source in the file)."""
    return OpenAPIContract(HERE / "runpod-openapi.json")


@cache
def replicate() -> OpenAPIContract:
    """Replicate's HTTP API, trimmed to what the `replicate` client does for captioning (source in the file)."""
    return OpenAPIContract(HERE / "replicate-openapi.json")
