"""The request service's pages for its users (beamstream.service.routes.ui), in headless chromium
(tests/browserkit.py) against a real ``beamstream service`` with mutual TLS, whose users come with bearer tokens
(minted with their certificates): alice sees her streams live, their history, logs and images, and never bob's."""

from __future__ import annotations

import pytest

from browserkit import Visit, browser  # noqa: F401 (browser: a fixture)
from servicekit import https_client, make_pki, tls_service

SHOWN = "window.beamstreamUi"
VIEWER = "window.beamstreamViewer"


def simulated(events: int, rate_hz: float | None) -> dict:
    return {"source": {"type": "simulated", "n_events": events, "rate_hz": rate_hz,
                       "detectors": [{"kind": "image", "shape": [256, 256]}, {"kind": "waveform", "samples": 500}]}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from beamstream.security import ca

    pki = make_pki(tmp_path_factory.mktemp("pki"))
    pki.bob = ca.issue(pki.dir, user="bob")
    return pki


@pytest.fixture(scope="module")
def service(pki, tmp_path_factory):
    with tls_service(tmp_path_factory.mktemp("service"), pki, drain_grace_s="30", tls_client_cert="optional") as url:
        yield url


@pytest.fixture(scope="module")
def streams(service, pki):
    """alice's long stream (``live``: 20 images/s for a minute), her short one (``done``, completed), bob's
    (``bobs``), by id; and a token of alice's (``token``)."""
    def request(who, name: str, spec: dict) -> str:
        with https_client(service, pki, who) as user:
            answer = user.post("/v1/streams", json={"spec": spec, "name": name})
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    made = {"live": request(pki.alice, "live", simulated(1200, 20.0)), "done": request(pki.alice, "done",
                                                                                          simulated(20, None)),
            "bobs": request(pki.bob, "bobs", simulated(20, None))}
    with https_client(service, pki, pki.alice) as alice:
        minted = alice.post("/v1/tokens", json={})
    assert minted.status_code == 201, minted.text
    return {**made, "token": minted.json()["token"]}


def visit(browser, url: str) -> Visit:
    """A page of ``browser`` at ``url`` (the service's CA is not the browser's: its certificate is not checked)."""
    opened = Visit(browser, ignore_https_errors=True)
    opened.page.goto(url)
    return opened


def test_the_list_shows_the_callers_streams_live_and_not_another_users(service, streams, browser):
    with visit(browser, f"{service}/ui/#token={streams['token']}") as seen:
        page = seen.page
        page.wait_for_function(f"() => {SHOWN}.streams.some(s => s.id === '{streams['live']}' && s.state === "
                               f"'running') && {SHOWN}.streams.some(s => s.id === '{streams['done']}' && s.state === "
                               "'completed')", timeout=60_000)
        listed = page.evaluate(f"{SHOWN}.streams")
        assert {stream["id"] for stream in listed} == {streams["live"], streams["done"]}
        assert {stream["owner"] for stream in listed} == {"alice"}
        row = page.locator(f"tr[data-id='{streams['live']}'] td")
        page.wait_for_function(f"() => /^[0-9,]+$/.test(document.querySelector(\"tr[data-id='{streams['live']}']\")"
                               ".cells[6].textContent)", timeout=20_000)  # events/s, once looked at twice
        assert row.nth(2).text_content() == "running" and row.nth(1).text_content() == "live"
        assert page.locator(f"tr[data-id='{streams['done']}'] td").nth(8).text_content() == "complete"
        assert seen.errors == [] and seen.left == []


def test_a_stream_page_shows_its_history_its_logs_and_its_images_live(service, streams, browser):
    with visit(browser, f"{service}/ui/streams/{streams['live']}#token={streams['token']}") as seen:
        page = seen.page
        page.wait_for_function(f"() => {SHOWN}.history >= 3 && {SHOWN}.logs > 0 && {SHOWN}.state === 'running'",
                               timeout=60_000)
        history = page.locator("#history tbody tr td:nth-child(2)").all_text_contents()
        assert history[:3] == ["queued", "starting", "running"]
        assert "==> buffer" in page.locator("#logs").text_content()
        viewer = page.frame_locator("#viewer")
        frame = next(frame for frame in page.frames if "/view/" in frame.url)
        frame.wait_for_function(f"() => {VIEWER}.images >= 3 && {VIEWER}.state === 'live'", timeout=30_000)
        first = frame.evaluate(VIEWER)
        frame.wait_for_function(f"() => {VIEWER}.imageSum !== {first['imageSum']}", timeout=10_000)
        assert first["imageSize"] == [256, 256] and first["waveforms"] >= 1
        assert viewer.locator("#source").text_content() == f"reading stream {streams['live']} of alice"
        assert seen.errors == [] and seen.left == []


def test_another_users_stream_is_unknown_to_its_page_and_its_viewer(service, streams, browser):
    with visit(browser, f"{service}/ui/streams/{streams['bobs']}#token={streams['token']}") as seen:
        page = seen.page
        page.wait_for_function(f"() => ({SHOWN}.problem || '').startsWith('404')", timeout=20_000)
        assert page.locator("#history tbody tr").count() == 0 and page.locator("#logs").text_content() == ""
        answer = page.evaluate("""async ([url, token]) => {
            const answer = await fetch(url, {headers: {Authorization: `Bearer ${token}`}});
            return [answer.status, (await answer.json()).detail];
        }""", [f"{service}/ui/streams/{streams['bobs']}/view/frame", streams["token"]])
        assert answer == [404, f"no stream {streams['bobs']!r}"]  # as for a stream that is not there
