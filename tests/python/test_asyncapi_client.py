"""A client that knows only docs/asyncapi.yaml drives a fulfillment end to end.

Against a real fulfillment-service on a vhost of its own: start it, pause and
resume it (answered signals), query its status and progress, change its
address (schema versions 1 and 2 side by side, as old and new senders do
during a rolling deploy), receive its status events through to SHIPPED with
the trace it was started in, see a refused signal answered with why, and see
what is not a message (or a version no reader accepts) dead-lettered with
its reason.
"""

from __future__ import annotations

import json
import secrets
import uuid

import pika
import pytest

from asyncapi_client import Contract, FulfillmentClient
from conftest import ASYNCAPI, Service, eventually

# Long enough to pause and change the address between steps, short enough
# to ship in a few seconds (one item: pick, check, pack, label, ship).
STEP_DELAY_MS = "400"
DEADLINE_S = 20


@pytest.fixture(scope="module")
def contract():
    return Contract.load(ASYNCAPI)


@pytest.fixture(scope="module")
def service(vhost, data_dir):
    s = Service("fulfillment-service", vhost.amqp_url, data_dir, {"STEP_DELAY_MS": STEP_DELAY_MS})
    yield s
    s.stop()


@pytest.fixture
def client(contract, vhost, service):
    c = FulfillmentClient(contract, vhost.amqp_url)
    yield c
    c.close()


def address(street: str) -> dict:
    return {"street": street, "city": "Springfield", "state": "IL", "zipCode": "62701", "country": "USA"}


def start_payload(order_id: str) -> dict:
    return {
        "orderId": order_id,
        "customerId": "python-client",
        "customerName": "Py Thon",
        "customerEmail": "py@example.com",
        "items": [{"productId": "product-1", "productName": "Widget", "quantity": 1, "price": 9.5}],
        "shippingAddress": address("1 Main St"),
    }


def status(client: FulfillmentClient, entity: str) -> dict:
    reply_id, reply = client.request("GetFulfillmentStatus", entity, {})
    assert reply_id == "FulfillmentStatusReply", reply
    return reply["payload"]


def answered(client: FulfillmentClient, component: str, entity: str, payload: dict) -> dict:
    reply_id, reply = client.request(component, entity, payload)
    assert reply_id == "SignalReply", reply
    return reply["payload"]


def test_a_fulfillment_end_to_end_from_the_document_alone(client, contract):
    order_id = f"ORD-PY-{uuid.uuid4().hex[:10].upper()}"
    entity = f"fulfillment-{order_id}"
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"

    client.subscribe_status_events()
    client.signal("StartFulfillment", entity, start_payload(order_id), traceparent=traceparent)

    # Pause as soon as it exists: answered, and it stays paused.
    eventually("the fulfillment to exist", DEADLINE_S, lambda: status(client, entity) or None)
    outcome = answered(client, "PauseFulfillment", entity, {})
    assert outcome["accepted"] is True and outcome["status"] == "PAUSED", outcome
    paused = status(client, entity)
    assert paused["status"] == "PAUSED" and paused["isPaused"] is True, paused
    _, progress = client.request("GetFulfillmentProgress", entity, {})
    assert progress["messageType"] == "FulfillmentProgressReply", progress
    assert progress["payload"]["status"] == "PAUSED"
    assert progress["payload"]["totalItems"] == 1

    # A new address, as an old sender writes it (version 1) and as a new one
    # does (version 2): both are applied, in the order sent.
    v1 = contract.component_for("UpdateShippingAddress", 1)
    v2 = contract.component_for("UpdateShippingAddress", 2)
    assert answered(client, v1, entity, {"address": address("2 Old Writer Rd")})["accepted"] is True
    assert status(client, entity)["shippingAddress"]["street"] == "2 Old Writer Rd"
    assert answered(client, v2, entity, {"shippingAddress": address("3 New Writer Ave")})["accepted"] is True
    assert status(client, entity)["shippingAddress"]["street"] == "3 New Writer Ave"

    # Resume: answered, and its status events run through to SHIPPED.
    outcome = answered(client, "ResumeFulfillment", entity, {})
    assert outcome["accepted"] is True, outcome
    seen = []
    while not seen or seen[-1] != "SHIPPED":
        event = client.next_event(DEADLINE_S)
        assert event is not None, f"status events stopped at {seen}"
        key, properties, body = event
        if body["entityId"] != entity:
            continue
        new_status = body["payload"]["fulfillment"]["status"]
        assert key == client.contract.route("fulfillmentStatusEvents", status=new_status.lower()).routing_key
        assert properties.type == body["messageType"] == "FulfillmentStatusChanged"
        assert properties.message_id == body["messageId"]
        assert properties.headers["entity-id"] == entity
        # The trace the fulfillment was started in, carried on every event.
        assert properties.headers["traceparent"].split("-")[1] == trace_id, properties.headers
        seen.append(new_status)
    assert {"PAUSED", "PACKING", "READY_TO_SHIP", "SHIPPED"} <= set(seen), seen
    shipped = status(client, entity)
    assert shipped["status"] == "SHIPPED" and shipped["trackingNumber"], shipped
    assert shipped["shippingAddress"]["street"] == "3 New Writer Ave"

    # A signal that is no longer allowed is refused, with why.
    outcome = answered(client, "PauseFulfillment", entity, {})
    assert outcome["accepted"] is False and outcome["status"] == "SHIPPED", outcome
    assert outcome["error"]["code"] == "CONFLICT" and outcome["error"]["message"], outcome

    # A query about a fulfillment that does not exist fails, with why.
    reply_id, reply = client.request("GetFulfillmentStatus", f"fulfillment-ORD-PY-NONE-{uuid.uuid4().hex}", {})
    assert reply_id == "QueryFailed" and reply["payload"]["code"] == "NOT_FOUND", reply


def dead_letter_headers(contract: Contract) -> list[str]:
    return list(contract.headers_schema("DeadLetter")["required"])


@pytest.mark.parametrize(
    "label, body, reason",
    [
        ("not JSON", b"this is not json at all", "malformed"),
        (
            "a version no reader accepts",
            json.dumps(
                {
                    "messageType": "UpdateShippingAddress",
                    "schemaVersion": 99,
                    "messageId": str(uuid.uuid4()),
                    "entityId": "fulfillment-ORD-PY-V99",
                    "sentAt": "2026-11-25T10:00:00Z",
                    "payload": {"address": address("9 Future St")},
                }
            ).encode(),
            "version",
        ),
    ],
)
def test_what_cannot_be_handled_is_dead_lettered_with_its_reason(client, contract, label, body, reason):
    marker = str(uuid.uuid4())
    client.publish_raw("fulfillmentSignals", body, pika.BasicProperties(message_id=marker, delivery_mode=2))
    signals_queue = contract.queue("fulfillmentSignalsQueue")
    headers = dead_letter_headers(contract)
    reason_header, queue_header = headers

    def dead_lettered():
        got = client.get_dead_letter("fulfillmentSignalsDlq")
        while got is not None:
            properties, dead_body = got
            if properties.message_id == marker:
                return properties, dead_body
            got = client.get_dead_letter("fulfillmentSignalsDlq")
        return None

    properties, dead_body = eventually(f"{label} in the dead-letter queue", DEADLINE_S, dead_lettered)
    assert dead_body == body, "the body is kept as it was"
    assert set(headers) <= set(properties.headers), properties.headers
    assert reason in properties.headers[reason_header].lower(), properties.headers
    assert properties.headers[queue_header] == signals_queue
