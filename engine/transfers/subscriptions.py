"""FHIR R4 Subscriptions (rest-hook) on Tasks: reading one a client submits, and what it delivers.

https://hl7.org/fhir/R4/subscription.html. A client POSTs a Subscription with `criteria` such as
`Task?owner=Organization/x`, `channel.type` rest-hook, `channel.endpoint`, optional `channel.header`
("Name: value") and `channel.payload`. The server stores it `requested`, and the delivery worker
makes it `active`. R4 rest-hook semantics: with no payload, each notification is an empty POST to
the endpoint; with payload `application/fhir+json`, it is a PUT of the resource to
`[endpoint]/Task/[id]`.

Only Task criteria are supported, and a user may subscribe only to Tasks of their own
organisation: the criteria must name it as `owner` or `requester`.

Pure: the caller checks the criteria's grammar with the search parser and stores the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

FHIR_JSON = "application/fhir+json"
PAYLOADS = frozenset({FHIR_JSON, "application/json"})
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


class SubscriptionError(ValueError):
    """What is wrong with a submitted Subscription, and where (a FHIRPath expression)."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression


@dataclass(frozen=True, slots=True)
class Channel:
    """Where and how notifications go: shared by Subscriptions and per-organisation endpoints."""

    endpoint: str
    headers: tuple[tuple[str, str], ...] = ()
    payload: str | None = None

    def request_for(self, res_type: str, res_id: str) -> tuple[str, str]:
        """(method, URL) of a rest-hook notification about `res_type/res_id` (R4 semantics above)."""
        if self.payload:
            return "PUT", f"{self.endpoint.rstrip('/')}/{res_type}/{res_id}"
        return "POST", self.endpoint


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    criteria: str
    resource_type: str
    items: tuple[tuple[str, str], ...]
    channel: Channel


def parse_header(line: str, where: str) -> tuple[str, str]:
    """"Name: value" → (name, value); names that would corrupt the HTTP request are refused."""
    name, sep, value = line.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \r\n") or "\n" in value or "\r" in value:
        raise SubscriptionError(f"A header must read 'Name: value', not {line[:60]!r}", where)
    if name.lower() in FORBIDDEN_HEADERS:
        raise SubscriptionError(f"The header {name} is set by the server", where)
    return name, value.strip()


def check_endpoint(url: Any, where: str) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).netloc:
        raise SubscriptionError("The endpoint must be an absolute http(s) URL", where)
    return url


def check_payload(payload: Any, where: str) -> str | None:
    if payload in (None, ""):
        return None
    if payload not in PAYLOADS:
        raise SubscriptionError(f"Payload must be empty or {FHIR_JSON}", where)
    return FHIR_JSON


def parse_criteria(criteria: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`Task?owner=…` → ("Task", items). Only Task criteria, with at least one parameter."""
    if not isinstance(criteria, str) or "?" not in criteria:
        raise SubscriptionError("criteria must be a search such as Task?owner=Organization/[id]", "Subscription.criteria")
    res_type, query = criteria.split("?", 1)
    if res_type != "Task":
        raise SubscriptionError("Only Task subscriptions are supported", "Subscription.criteria")
    items = tuple(parse_qsl(query, keep_blank_values=True))
    if not items:
        raise SubscriptionError("criteria carries no search parameters", "Subscription.criteria")
    return res_type, items


def parse_subscription(body: Mapping[str, Any]) -> SubscriptionSpec:
    """Read a submitted Subscription (R4); raises SubscriptionError naming the element at fault."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Subscription":
        raise SubscriptionError("The body must be a Subscription resource", "Subscription")
    if body.get("status", "requested") not in {"requested", "active", "off"}:
        raise SubscriptionError("status must be requested (the server activates it)", "Subscription.status")
    if not body.get("reason"):
        raise SubscriptionError("reason is required (Subscription.reason 1..1)", "Subscription.reason")
    res_type, items = parse_criteria(body.get("criteria"))
    channel = body.get("channel")
    if not isinstance(channel, Mapping) or channel.get("type") != "rest-hook":
        raise SubscriptionError("Only rest-hook channels are supported", "Subscription.channel.type")
    headers = tuple(parse_header(h, "Subscription.channel.header") for h in _strings(channel.get("header")))
    return SubscriptionSpec(
        criteria=str(body["criteria"]), resource_type=res_type, items=items,
        channel=Channel(check_endpoint(channel.get("endpoint"), "Subscription.channel.endpoint"), headers,
                        check_payload(channel.get("payload"), "Subscription.channel.payload")),
    )


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SubscriptionError("channel.header must be a list of strings", "Subscription.channel.header")
    return value


def names_organization(items: Sequence[tuple[str, str]], organization_id: str) -> bool:
    """Whether the criteria restrict Tasks to ones owned or requested by `organization_id`."""
    wanted = {f"Organization/{organization_id}", organization_id}
    return any(name.split(":")[0] in {"owner", "requester"} and value in wanted for name, value in items)


def stored_subscription(body: Mapping[str, Any], sub_id: str, status: str, version_id: int,
                        last_updated: str, error: str | None = None) -> dict[str, Any]:
    """The Subscription as served: the client's content with id, meta and the server's status."""
    document: dict[str, Any] = {"resourceType": "Subscription", "id": sub_id,
                                "meta": {"versionId": str(version_id), "lastUpdated": last_updated}}
    document.update({k: v for k, v in body.items() if k not in {"resourceType", "id", "meta", "status", "error"}})
    document["status"] = status
    if error:
        document["error"] = error
    return document
