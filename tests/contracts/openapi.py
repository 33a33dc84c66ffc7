"""A provider's published OpenAPI 3.1 document as a test oracle: request and response bodies checked against it.

OpenAPI 3.1 schema objects are JSON Schema 2020-12, so the `jsonschema` library validates them as they are;
`#/components/...` references resolve inside the stored document through a `referencing` registry.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

HERE = Path(__file__).resolve().parent
DOC_URI = "urn:lora-gym:openapi"


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class OpenAPIContract:
    def __init__(self, path: Path):
        self.doc = json.loads(Path(path).read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)
        self.templates = [(re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", p) + "$"), p) for p in self.doc["paths"]]

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
            for part in obj["$ref"].removeprefix("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj

    def _problems(self, pointer: str, body) -> list[str]:
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#/{pointer}"}, registry=self.registry)
        return [f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in validator.iter_errors(body)]

    def request_problems(self, method: str, path: str, body) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path} is not an operation of the document"]
        template, op = found
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            return [] if body is None else [f"{method} {template} takes no body"]
        if body is None:
            return [f"{method} {template} needs a JSON body"] if op["requestBody"].get("required") else []
        pointer = _pointer("paths", template, method.lower(), "requestBody", "content", "application/json",
                           "schema")
        return [f"{method} {template} request {p}" for p in self._problems(pointer, body)]

    def response_problems(self, method: str, path: str, status: int, content_type: str, body) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path} is not an operation of the document"]
        template, op = found
        responses = op["responses"]
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            return [f"{method} {template} does not answer {status}"]
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
        base = ref.removeprefix("#/").split("/") if ref else ["paths", template, method.lower(), "responses", key]
        pointer = _pointer(*base, "content", media, "schema")
        return [f"{method} {template} {status} response {p}" for p in self._problems(pointer, body)]


@cache
def runpod() -> OpenAPIContract:
    """RunPod's REST API v2, trimmed to what the backend calls (source and date in the file)."""
    return OpenAPIContract(HERE / "runpod-openapi.json")
