"""Both services' OpenAPI documents are valid, and the services keep them.

The documents are fetched from the running services (`/openapi.json`),
validated with openapi-spec-validator (the check client generators rely
on: unique operationIds among others), then schemathesis sends each
operation a bounded, seeded set of generated requests and checks that no
answer is a server error or falls outside the document (status code,
content type, body schema).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from conftest import Service, http

# Generated requests per operation. Enough to try every documented status
# and the edges of every parameter; small enough to keep the run short.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "17")
# What "no server error, no response outside the schema" means, as
# schemathesis checks.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture(scope="module")
def services(vhost, data_dir):
    env = {
        "STEP_DELAY_MS": "0",
        "INVENTORY_DELAY_MS": "0",
        "PAYMENT_DELAY_MS": "0",
        "QUERY_TIMEOUT_MS": "2000",
    }
    fulfillment = Service("fulfillment-service", vhost.amqp_url, data_dir, env)
    order = Service("order-service", vhost.amqp_url, data_dir, env)
    yield {"order-service": order, "fulfillment-service": fulfillment}
    order.stop()
    fulfillment.stop()


SERVICES = ["order-service", "fulfillment-service"]


@pytest.mark.parametrize("name", SERVICES)
def test_openapi_document_is_valid(services, name):
    status, document = http("GET", services[name].base_url + "/openapi.json")
    assert status == 200, document
    validate(document)
    ids = [
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    operations = sum(
        1
        for item in document["paths"].values()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    )
    assert len(ids) == operations, "every operation has an operationId"
    assert len(set(ids)) == len(ids), f"operationIds are unique: {sorted(ids)}"


@pytest.mark.parametrize("name", SERVICES)
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    services, name, tmp_path: Path
):
    service = services[name]
    # Path ids of entities that exist, so that generated requests reach the
    # handlers' logic rather than only their 404.
    order_status, order = http("POST", services["order-service"].base_url + "/orders/demo")
    assert order_status == 201, order
    fulfillment_id = f"fulfillment-{order['orderId']}"
    created, fulfillment = http(
        "POST",
        services["fulfillment-service"].base_url + "/fulfillments",
        {
            "orderId": f"ST-{uuid.uuid4().hex[:8]}",
            "customerId": "schemathesis",
            "items": [{"productId": "product-1", "productName": "Widget", "quantity": 1, "price": 1.0}],
            "shippingAddress": {
                "street": "1 Main St", "city": "Springfield", "state": "IL",
                "zipCode": "62701", "country": "USA",
            },
        },
    )
    assert created in (200, 201, 202), fulfillment
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        f'"path.workflow_id" = "{order["workflowId"]}"\n'
        f'"path.fulfillment_id" = "{fulfillment_id}"\n'
        f'"path.id" = "{fulfillment["fulfillmentWorkflowId"]}"\n'
    )
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        service.base_url + "/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        # The page for people is HTML for a browser; the Rust system tests
        # render it.
        "--exclude-operation-id",
        "page",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    print(result.stdout[-4000:])
    assert result.returncode == 0, (
        f"schemathesis found problems in {name}:\n{result.stdout[-8000:]}\n{result.stderr[-2000:]}"
    )
