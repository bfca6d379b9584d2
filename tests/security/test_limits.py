"""Abuse limits, CORS, the cookie session, and tokens kept out of logs."""

import httpx

from tests.conftest import Services
from tests.support import PUBLISHER_KEYS, grade_body, open_stream, token_for, unique

KEY = {"Authorization": f"Bearer {PUBLISHER_KEYS[0]}"}


async def test_a_key_publishing_too_fast_gets_429_with_retry_after(
    client: httpx.AsyncClient, services: Services
) -> None:
    publisher = services.start("publisher", PUBLISH_RATE_PER_SECOND="0.5", PUBLISH_BURST="2")
    url = f"{publisher.url}/grades/publish"
    codes = [(await client.post(url, json=grade_body(unique()), headers=KEY)) for _ in range(3)]
    assert [r.status_code for r in codes] == [201, 201, 429]
    assert int(codes[2].headers["retry-after"]) >= 1
    assert codes[2].json()["error"]["code"] == "too_many_requests"
    # Another key has a bucket of its own.
    other = {"Authorization": f"Bearer {PUBLISHER_KEYS[1]}"}
    assert (await client.post(url, json=grade_body(unique()), headers=other)).status_code == 201


async def test_connection_attempts_per_address_are_limited_before_auth(
    client: httpx.AsyncClient, services: Services
) -> None:
    node = services.start(
        "stream", "--node-id", unique("node"), CONNECT_RATE_PER_SECOND="0.5", CONNECT_BURST="2"
    )
    url = f"{node.url}/notifications/stream/{unique()}"
    codes = [
        (await client.get(url, headers={"Authorization": "Bearer wrong"})).status_code
        for _ in range(3)
    ]
    assert codes == [401, 401, 429]


async def test_cors_allows_the_schools_own_site_only(
    client: httpx.AsyncClient, services: Services
) -> None:
    node = services.start(
        "stream", "--node-id", unique("node"), CORS_ALLOWED_ORIGINS="https://school.example"
    )
    url = f"{node.url}/notifications/missed/{unique()}"
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = await client.options(url, headers={"Origin": "https://school.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://school.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    other = await client.options(url, headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


async def test_a_session_cookie_carries_the_token_and_query_tokens_stay_out_of_logs(
    client: httpx.AsyncClient, services: Services
) -> None:
    node = services.start("stream", "--node-id", unique("node"))
    student = unique()
    token = token_for(student)
    session = await client.post(
        f"{node.url}/notifications/session", headers={"Authorization": f"Bearer {token}"}
    )
    assert session.status_code == 204
    cookie = session.headers["set-cookie"]
    assert cookie.startswith(f"gradecast_token={token};")
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/notifications"):
        assert flag in cookie
    refused = await client.post(f"{node.url}/notifications/session?token={token}")
    assert refused.status_code == 401  # only from the Authorization header

    jar = {"gradecast_token": token}
    async with httpx.AsyncClient(timeout=10, cookies=jar) as browser:
        async with open_stream(browser, node.url, student, None) as stream:
            await stream.assert_quiet(0.3)

    missed = await client.get(f"{node.url}/notifications/missed/{student}?token={token}")
    assert missed.status_code == 200
    log = node.log.read_text()
    assert f"/notifications/missed/{student}?token=[redacted]" in log
    assert token not in log


async def test_connections_names_students_to_operators_only(
    client: httpx.AsyncClient, services: Services
) -> None:
    node = services.start("stream", "--node-id", unique("node"), OPERATOR_TOKEN="op-secret")
    url = f"{node.url}/connections"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
    allowed = await client.get(url, headers={"Authorization": "Bearer op-secret"})
    assert allowed.status_code == 200 and allowed.json()["total"] == 0
    # Without a token configured, only this host: a request seen as from elsewhere is refused.
    open_node = services.start("stream", "--node-id", unique("node"), FORWARDED_ALLOW_IPS="*")
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    assert (await client.get(f"{open_node.url}/connections", headers=forwarded)).status_code == 403
    assert (await client.get(f"{open_node.url}/connections")).status_code == 200
