"""What both HTTP services share: health, readiness, docs and the one error shape."""

import httpx

from tests.support import ServiceProcess


async def test_health_ready_and_json_errors_on_every_service(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    for service in (publisher, node_a):
        assert (await client.get(f"{service.url}/health")).json() == {"status": "ok"}
        ready = (await client.get(f"{service.url}/ready")).json()
        assert ready["status"] == "ready" and all(ready["checks"].values())

        missing = await client.get(f"{service.url}/no/such/path")
        assert missing.status_code == 404
        assert missing.json() == {"error": {"code": "not_found", "message": "Not Found"}}
        wrong_method = await client.delete(f"{service.url}/health")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert (await client.get(f"{node_a.url}/ready")).json()["checks"]["consumer"] is True


async def test_the_docs_describe_the_publish_body_and_the_stream(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    assert (await client.get(f"{publisher.url}/docs")).status_code == 200
    spec = (await client.get(f"{publisher.url}/openapi.json")).json()
    publish = spec["paths"]["/grades/publish"]["post"]
    schema = publish["requestBody"]["content"]["application/json"]["schema"]
    assert {"studentId", "studentIds", "assignmentId", "grade"} <= set(schema["properties"])
    assert {"401", "413", "415", "422", "503"} <= set(publish["responses"])

    stream_spec = (await client.get(f"{node_a.url}/openapi.json")).json()
    stream = stream_spec["paths"]["/notifications/stream/{student_id}"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
