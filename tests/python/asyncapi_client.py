"""A fulfillment client in Python (pika) that knows only docs/asyncapi.yaml.

Every exchange, routing key, queue, message type, schema version, header and
property it uses is read from the AsyncAPI document at run time; every
message it receives is checked against the document's schema for it. If the
services and the document drift apart, this client breaks, which is the
point: it is what a team outside Rust would write from the document alone.

    contract = Contract.load("docs/asyncapi.yaml")
    client = FulfillmentClient(contract, "amqp://guest:guest@127.0.0.1:5672/%2f")
    client.signal("StartFulfillment", "fulfillment-ORD-1", {...})
    reply = client.request("GetFulfillmentStatus", "fulfillment-ORD-1", {})
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pika
import yaml


@dataclass
class Route:
    exchange: str
    routing_key: str


class Contract:
    """What docs/asyncapi.yaml says, in the terms a client needs."""

    def __init__(self, doc: dict):
        self.doc = doc

    @classmethod
    def load(cls, path: str | Path) -> "Contract":
        with open(path, encoding="utf-8") as f:
            return cls(yaml.safe_load(f))

    def channel(self, channel_id: str) -> dict:
        return self.doc["channels"][channel_id]

    def _component(self, ref_or_obj: dict) -> dict:
        """Follows one local `$ref` (`#/a/b/c`)."""
        ref = ref_or_obj.get("$ref")
        if ref is None:
            return ref_or_obj
        node = self.doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return self._component(node)

    def parameter_values(self, channel_id: str, name: str) -> list[str]:
        return list(self._component(self.channel(channel_id)["parameters"][name])["enum"])

    def route(self, channel_id: str, **params: str) -> Route:
        """The exchange and routing key of a routing-key channel, its
        address parameters filled in."""
        amqp = self.channel(channel_id)["bindings"]["amqp"]
        assert amqp["is"] == "routingKey", f"{channel_id} is a routing-key channel"
        key = self.channel(channel_id)["address"]
        for name, value in params.items():
            allowed = self.parameter_values(channel_id, name)
            assert value in allowed, f"{name}={value} is one of {allowed}"
            key = key.replace("{" + name + "}", value)
        assert "{" not in key, f"every parameter of {channel_id} is given"
        return Route(amqp["exchange"]["name"], key)

    def queue(self, channel_id: str) -> str:
        amqp = self.channel(channel_id)["bindings"]["amqp"]
        assert amqp["is"] == "queue", f"{channel_id} is a queue channel"
        return amqp["queue"]["name"]

    def channel_messages(self, channel_id: str) -> dict[str, dict]:
        """component id -> message, of one channel."""
        return {
            ref["$ref"].rsplit("/", 1)[-1]: self._component(ref)
            for ref in self.channel(channel_id)["messages"].values()
        }

    def message(self, component_id: str) -> dict:
        return self.doc["components"]["messages"][component_id]

    def type_and_version(self, component_id: str) -> tuple[str, int]:
        for part in self.message(component_id)["payload"]["allOf"]:
            props = self._component(part).get("properties", {})
            if "const" in props.get("messageType", {}):
                return props["messageType"]["const"], props["schemaVersion"]["const"]
        raise AssertionError(f"{component_id} fixes its type and version")

    def component_for(self, message_type: str, version: int) -> str:
        for component_id in self.doc["components"]["messages"]:
            if component_id == "DeadLetter":
                continue
            if self.type_and_version(component_id) == (message_type, version):
                return component_id
        raise AssertionError(f"no message {message_type} v{version} in the document")

    def headers_schema(self, component_id: str) -> dict:
        message = self.message(component_id)
        if "headers" in message:
            return self._component(message["headers"])
        for trait in message.get("traits", []):
            trait = self._component(trait)
            if "headers" in trait:
                return self._component(trait["headers"])
        raise AssertionError(f"{component_id} has headers")

    def properties(self, component_id: str) -> tuple[dict, dict]:
        """(AMQP basic properties, application headers) the headers schema
        lists for a message: name -> schema."""
        schema = self.headers_schema(component_id)
        basic, headers = {}, {}
        for name, prop in schema["properties"].items():
            prop = self._component(prop)
            (basic if prop.get("x-amqp-property") else headers)[name] = prop
        return basic, headers

    def example_property(self, component_id: str, name: str):
        for example in self.message(component_id).get("examples", []):
            if name in example.get("headers", {}):
                return example["headers"][name]
        raise AssertionError(f"{component_id}: no example shows {name}")

    def validate(self, component_id: str, body: dict) -> None:
        """Checks a body against the document's schema for the message."""
        schema = dict(self.doc)
        schema["$ref"] = f"#/components/messages/{component_id}/payload"
        jsonschema.Draft202012Validator(schema).validate(body)


class FulfillmentClient:
    """Signals, queries and events of fulfillment, over one connection."""

    APP_ID = "python-contract-client"

    def __init__(self, contract: Contract, amqp_url: str):
        self.contract = contract
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        # Signals: persistent, confirmed, mandatory.
        self.signals = self.connection.channel()
        self.signals.confirm_delivery()
        # Requests: direct reply-to, consumed with no-ack on the channel
        # that publishes the requests.
        self.rpc = self.connection.channel()
        self.reply_to = contract.example_property("GetFulfillmentStatus", "reply_to")
        self.replies: dict[str, tuple] = {}
        self.rpc.basic_consume(self.reply_to, self._on_reply, auto_ack=True)
        self.events = self.connection.channel()
        self.event_queue: str | None = None

    def close(self):
        if self.connection.is_open:
            self.connection.close()

    def _on_reply(self, _channel, _method, properties, body):
        self.replies[properties.correlation_id] = (properties, body)

    # ----- building messages from the document -----

    def envelope(self, component_id: str, entity_id: str, payload: dict, traceparent=None):
        message_type, version = self.contract.type_and_version(component_id)
        body = {
            "messageType": message_type,
            "schemaVersion": version,
            "messageId": str(uuid.uuid4()),
            "entityId": entity_id,
            "sentAt": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "payload": payload,
        }
        if traceparent:
            body["traceparent"] = traceparent
        self.contract.validate(component_id, body)
        return body

    def _properties(self, component_id: str, body: dict, **extra) -> pika.BasicProperties:
        basic, headers = self.contract.properties(component_id)
        values = {
            "message_id": body["messageId"],
            "type": body["messageType"],
            "content_type": basic["content_type"]["const"],
            "app_id": self.APP_ID,
            "timestamp": int(time.time()),
            "delivery_mode": basic["delivery_mode"]["const"],
            **extra,
        }
        unknown = set(values) - set(basic)
        assert not unknown, f"{component_id}: properties {unknown} are not in the document"
        header_values = {"entity-id": body["entityId"]}
        if "traceparent" in body:
            header_values["traceparent"] = body["traceparent"]
        unknown = set(header_values) - set(headers)
        assert not unknown, f"{component_id}: headers {unknown} are not in the document"
        return pika.BasicProperties(headers=header_values, **values)

    # ----- signals -----

    def signal(self, component_id: str, entity_id: str, payload: dict, traceparent=None) -> dict:
        """Fire and forget (confirmed by the broker): returns the body sent."""
        route = self.contract.route("fulfillmentSignals")
        assert component_id in self.contract.channel_messages("fulfillmentSignals")
        body = self.envelope(component_id, entity_id, payload, traceparent)
        self.signals.basic_publish(
            route.exchange,
            route.routing_key,
            json.dumps(body).encode(),
            self._properties(component_id, body),
            mandatory=True,
        )
        return body

    def publish_raw(self, channel_id: str, body: bytes, properties=None) -> None:
        """Publishes bytes as they are (to test what the service does with
        what is not a message)."""
        route = self.contract.route(channel_id)
        self.signals.basic_publish(
            route.exchange, route.routing_key, body, properties or pika.BasicProperties(), mandatory=True
        )

    def request(self, component_id: str, entity_id: str, payload: dict, timeout_s: float = 5.0):
        """A query, or a signal whose outcome is needed: waits for the reply
        and returns (reply component id, reply body), checked against the
        document."""
        if component_id in self.contract.channel_messages("fulfillmentQueries"):
            channel_id, operation = "fulfillmentQueries", "receiveQuery"
        else:
            channel_id, operation = "fulfillmentSignals", "receiveSignal"
        route = self.contract.route(channel_id)
        body = self.envelope(component_id, entity_id, payload)
        correlation_id = str(uuid.uuid4())
        extra = {"reply_to": self.reply_to, "correlation_id": correlation_id}
        if channel_id == "fulfillmentQueries":
            extra["expiration"] = str(int(timeout_s * 1000))
        self.rpc.basic_publish(
            route.exchange,
            route.routing_key,
            json.dumps(body).encode(),
            self._properties(component_id, body, **extra),
        )
        deadline = time.monotonic() + timeout_s
        while correlation_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {component_id} for {entity_id} in {timeout_s}s")
            self.connection.process_data_events(time_limit=min(left, 0.1))
        properties, raw = self.replies.pop(correlation_id)
        reply = json.loads(raw)
        # The reply is one the operation documents, and fits its schema.
        allowed = [
            self.contract._component(m)
            for m in self.contract.doc["operations"][operation]["reply"]["messages"]
        ]
        names = [m["name"] for m in allowed]
        assert reply["messageType"] in names, f"{reply['messageType']} is one of {names}"
        assert properties.type == reply["messageType"]
        reply_id = self.contract.component_for(reply["messageType"], reply["schemaVersion"])
        self.contract.validate(reply_id, reply)
        return reply_id, reply

    # ----- events -----

    def subscribe_status_events(self) -> None:
        """A queue of this client's own (server-named, exclusive), bound to
        every status event key the document lists."""
        declared = self.events.queue_declare("", exclusive=True, auto_delete=True)
        self.event_queue = declared.method.queue
        for status in self.contract.parameter_values("fulfillmentStatusEvents", "status"):
            route = self.contract.route("fulfillmentStatusEvents", status=status)
            self.events.queue_bind(self.event_queue, route.exchange, route.routing_key)

    def next_event(self, timeout_s: float):
        """(routing key, properties, body) of the next status event, checked
        against the document; None at the timeout."""
        assert self.event_queue, "subscribe first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            method, properties, raw = self.events.basic_get(self.event_queue, auto_ack=True)
            if method is None:
                self.connection.process_data_events(time_limit=0.05)
                continue
            body = json.loads(raw)
            component = self.contract.component_for(body["messageType"], body["schemaVersion"])
            assert component in self.contract.channel_messages("fulfillmentStatusEvents")
            self.contract.validate(component, body)
            return method.routing_key, properties, body
        return None

    # ----- dead letters -----

    def get_dead_letter(self, channel_id: str):
        """(properties, body) of the next message in a dead-letter queue, or None."""
        method, properties, body = self.events.basic_get(self.contract.queue(channel_id), auto_ack=True)
        return None if method is None else (properties, body)
