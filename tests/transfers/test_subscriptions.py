"""Reading Subscriptions (engine/transfers/subscriptions.py) and the transfer settings."""

from __future__ import annotations

import pytest

from engine.transfers.config import load_transfers_config
from engine.transfers.subscriptions import (
    Channel,
    SubscriptionError,
    names_organization,
    parse_subscription,
    stored_subscription,
)


def subscription(**changes) -> dict:
    body = {"resourceType": "Subscription", "status": "requested", "reason": "transfers to us",
            "criteria": "Task?owner=Organization/org1&status=requested",
            "channel": {"type": "rest-hook", "endpoint": "https://gp.example/hook",
                        "header": ["Authorization: Bearer abc"]}}
    return body | changes


def test_a_rest_hook_subscription_is_read() -> None:
    spec = parse_subscription(subscription())
    assert spec.items == (("owner", "Organization/org1"), ("status", "requested"))
    assert spec.channel == Channel("https://gp.example/hook", (("Authorization", "Bearer abc"),), None)
    assert spec.channel.request_for("Task", "t1") == ("POST", "https://gp.example/hook")


def test_with_a_payload_the_resource_is_put_to_the_endpoint_base() -> None:
    spec = parse_subscription(subscription(channel={"type": "rest-hook", "endpoint": "https://gp.example/fhir/",
                                                    "payload": "application/fhir+json"}))
    assert spec.channel.request_for("Task", "t1") == ("PUT", "https://gp.example/fhir/Task/t1")


@pytest.mark.parametrize(("changes", "where"), [
    ({"criteria": "Patient?name=x"}, "Subscription.criteria"),
    ({"criteria": "Task"}, "Subscription.criteria"),
    ({"reason": None}, "Subscription.reason"),
    ({"channel": {"type": "websocket"}}, "Subscription.channel.type"),
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://x"}}, "Subscription.channel.endpoint"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://x", "payload": "text/xml"}}, "Subscription.channel.payload"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://x", "header": ["Host: evil"]}}, "Subscription.channel.header"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://x", "header": ["no colon"]}}, "Subscription.channel.header"),
])
def test_bad_subscriptions_are_refused_naming_the_element(changes: dict, where: str) -> None:
    with pytest.raises(SubscriptionError) as caught:
        parse_subscription(subscription(**changes))
    assert caught.value.expression == where


def test_criteria_must_name_the_subscribers_organisation() -> None:
    assert names_organization([("owner", "Organization/org1")], "org1")
    assert names_organization([("requester", "org1"), ("status", "requested")], "org1")
    assert not names_organization([("owner", "Organization/org2")], "org1")
    assert not names_organization([("status", "requested")], "org1")


def test_the_served_subscription_carries_the_servers_status() -> None:
    served = stored_subscription(subscription(id="client", status="active"), "s1", "requested", 1, "2024-01-01T00:00:00.000Z")
    assert (served["id"], served["status"], served["meta"]["versionId"]) == ("s1", "requested", "1")


def test_settings_from_the_environment() -> None:
    config = load_transfers_config({"SHAREDCARE_TRANSFERS_CARE_HOME_CODES": "54, 85",
                                    "SHAREDCARE_DELIVERY_FIRST_RETRY_SECONDS": "0.5",
                                    "SHAREDCARE_DELIVERY_RETRY_FOR_SECONDS": "60",
                                    "SHAREDCARE_DELIVERY_ENABLED": "0"})
    assert config.care_home_codes == frozenset({"54", "85"})
    assert (config.retry.first_delay, config.retry.retry_for, config.delivery_enabled) == (0.5, 60.0, False)
    assert load_transfers_config({}).retry.retry_for >= 24 * 3600
    with pytest.raises(ValueError, match="SHAREDCARE_DELIVERY_POLL_SECONDS"):
        load_transfers_config({"SHAREDCARE_DELIVERY_POLL_SECONDS": "soon"})
    with pytest.raises(ValueError, match="LEASE"):
        load_transfers_config({"SHAREDCARE_DELIVERY_LEASE_SECONDS": "5", "SHAREDCARE_DELIVERY_TIMEOUT_SECONDS": "10"})
