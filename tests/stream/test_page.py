"""The student page in a real browser (Debian's headless Chromium): grades shown live, the
browser's own EventSource reconnection across a node's restart, and the connection state."""

import asyncio
import signal
from typing import Any

import httpx
from playwright.async_api import ConsoleMessage, async_playwright, expect

from services.core.broker import node_queue_name
from services.stream.page import CONTENT_SECURITY_POLICY
from tests.conftest import Services
from tests.support import (
    MANAGEMENT_AUTH,
    MANAGEMENT_URL,
    ROOT,
    ServiceProcess,
    eventually,
    grade_body,
    publish,
    token_for,
)
from tests.support import unique as unique_id

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "tests" / "artifacts"


def notification_id(result: dict[str, Any]) -> str:
    value: str = result["notifications"][0]["id"]
    return value


async def test_the_page_shows_live_grades_and_rides_out_a_node_restart(
    client: httpx.AsyncClient, services: Services, publisher: ServiceProcess, amqp_vhost: str
) -> None:
    node_id = unique_id("node")
    node = services.start("stream", "--node-id", node_id)
    student = unique_id()
    token = token_for(student)
    queue_url = f"{MANAGEMENT_URL}/queues/{amqp_vhost}/{node_queue_name(node_id)}"

    async def queue_gone() -> bool:
        return (await client.get(queue_url, auth=MANAGEMENT_AUTH)).status_code == 404

    page_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            page_errors.append(message.text)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 820, "height": 760})
            page = await context.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.on("console", on_console)

            response = await page.goto(f"{node.url}/#token={token}")
            assert response is not None and response.status == 200
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["cache-control"] == "no-cache"
            connection = page.locator("#connection")
            await expect(connection).to_have_attribute("data-state", "live")
            assert "token" not in page.url  # wiped from the address bar and its history
            cookies = {c["name"]: c for c in await context.cookies()}
            assert cookies["gradecast_token"]["httpOnly"]
            await expect(page.locator("#student-id")).to_have_text(student)
            await expect(page.locator("#empty")).to_be_visible()

            # (a) a grade published after the page loaded shows up as a card.
            body = grade_body(
                student,
                grade="A-",
                courseId="hist-201",
                assignmentTitle="Essay: causes of the First World War",
                teacherComment="A well-argued essay; cite your sources for the last section.",
            )
            first = notification_id(await publish(client, publisher.url, body))
            cards = page.locator("article.card")
            await expect(cards.filter(has_text=body["assignmentId"])).to_have_count(1)
            await expect(page.locator("#unread-count")).to_have_text("1")

            # (b), (c) the node dies: the page says so, and the browser's own EventSource
            # comes back to the node restarted on the same port with what it missed.
            assert node.process is not None
            node.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(node.process.wait, 10)
            await expect(connection).to_have_attribute("data-state", "reconnecting")
            await expect(connection).to_contain_text("reconnecting")
            await eventually(queue_gone)  # the exclusive queue goes with its connection
            meanwhile = [
                grade_body(student, grade=15, courseId="math-110", assignmentTitle="Quiz 4"),
                grade_body(
                    student,
                    grade="B+",
                    courseId="chem-120",
                    assignmentTitle="Lab report: titration",
                    teacherComment="Clear method. Check the significant figures in table 2.",
                ),
            ]
            ids = [notification_id(await publish(client, publisher.url, b)) for b in meanwhile]
            await expect(connection).to_have_attribute("data-state", "reconnecting")
            await asyncio.to_thread(services.start, "stream", "--node-id", node_id, port=node.port)
            await expect(connection).to_have_attribute("data-state", "live", timeout=10_000)
            await expect(connection).to_contain_text("live")
            for notification in ids:
                await expect(page.locator(f'article.card[data-id="{notification}"]')).to_have_count(
                    1
                )
            await asyncio.sleep(0.5)  # room for a duplicate to show up, were there one
            shown = await cards.evaluate_all("cards => cards.map(card => card.dataset.id)")
            assert shown == [ids[1], ids[0], first]  # newest first, each exactly once
            await expect(page.locator("#unread-count")).to_have_text("3")

            # Clicking a card marks it read.
            await cards.filter(has_text="Quiz 4").click()
            await expect(cards.filter(has_text="Quiz 4")).to_contain_class("read")
            await expect(page.locator("#unread-count")).to_have_text("2")

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            screenshot = ARTIFACTS / "page.png"
            await page.screenshot(path=screenshot, full_page=True, animations="disabled")

            await page.get_by_role("button", name="Mark all read").click()
            await expect(page.locator("#unread-count")).to_have_text("0")
            await expect(page.locator("article.card.unread")).to_have_count(0)
        finally:
            await browser.close()

    assert page_errors == []
    # The token went to the server in a header and a cookie, never in a logged URL.
    assert token not in node.log.read_text()
