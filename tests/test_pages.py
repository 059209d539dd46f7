"""The service's pages for people (beamstream.service.pages): ``/``, ``/docs`` and ``/redoc`` work with no network.

The browser tests drive Debian's chromium through the playwright package (tests/browserkit.py), against a real
``beamstream service`` process, with every request to a host other than this machine blocked and counted.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from beamstream.service.app import create_app
from beamstream.service.pages import ASSETS_URL
from beamstream.service.settings import ServiceSettings
from browserkit import Visit, browser  # noqa: F401 (browser: a fixture)
from servicekit import run_service, stop_service


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    return TestClient(create_app(ServiceSettings(database_url=f"sqlite:///{folder / 'db'}",
                                                 state_dir=folder / "state")))


def test_the_pages_take_their_assets_from_the_service_not_a_cdn(api):
    for page in ("/docs", "/redoc"):
        html = api.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(url.startswith(ASSETS_URL + "/") for url in assets), assets
        for url in assets:
            answer = api.get(url)
            assert answer.status_code == 200 and len(answer.content) > 1000, url
        assert "fonts.googleapis" not in html
    assert '"validatorUrl": null' in api.get("/docs").text  # else Swagger UI sends the API to validator.swagger.io


def test_every_page_keeps_the_browser_to_the_service(api):
    for page in ("/", "/docs", "/redoc"):
        header = api.get(page).headers["content-security-policy"]
        policy = dict(part.strip().split(" ", 1) for part in header.split(";"))
        assert all("'self'" in sources or sources == "'none'" for sources in policy.values()), policy
        assert not [source for sources in policy.values() for source in sources.split()
                    if source.startswith("http") or source == "*"], policy


def test_the_pages_are_not_in_the_openapi_document_and_need_no_identity(tmp_path):
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'db'}", state_dir=tmp_path / "state",
                               tls_cert=tmp_path / "s.crt", tls_key=tmp_path / "s.key", tls_ca=tmp_path / "ca.crt")
    api = TestClient(create_app(settings))
    assert api.get("/v1/streams").status_code == 401  # with TLS on, the API wants an identity; the pages do not
    for page in ("/", "/docs", "/redoc", f"{ASSETS_URL}/swagger-ui.css"):
        assert api.get(page).status_code == 200, page
    paths = api.get("/openapi.json").json()["paths"]
    assert "/v1/streams" in paths and not {"/", "/docs", "/redoc"} & set(paths)


def test_the_home_page_names_the_service_and_links_its_pages_under_the_root_path(api):
    from importlib.metadata import version

    page = api.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "beamstream request service" in page.text and version("beamstream") in page.text
    behind_a_proxy = TestClient(api.app, root_path="/beamstream").get("/").text
    links = re.findall(r'<a href="([^"]+)"', behind_a_proxy)
    assert links == ["/beamstream/docs", "/beamstream/redoc", "/beamstream/openapi.json", "/beamstream/healthz"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    process, url = run_service(tmp_path_factory.mktemp("service"))
    try:
        yield url
    finally:
        stop_service(process, url)


def test_swagger_ui_renders_the_operations_with_no_network(service, browser):
    from playwright.sync_api import expect

    with Visit(browser) as visit:
        visit.page.goto(f"{service}/docs")
        operation = visit.page.locator(".opblock-post .opblock-summary-path[data-path='/v1/streams']")
        expect(operation).to_be_visible()
        expect(visit.page.locator(".opblock-get .opblock-summary-path[data-path='/healthz']")).to_be_visible()
        assert visit.errors == [] and visit.left == []
        assert f"{service}/openapi.json" in visit.made
        assert f"{service}{ASSETS_URL}/swagger-ui-bundle.js" in visit.made


def test_redoc_shows_the_api_with_no_network(service, browser):
    from playwright.sync_api import expect

    with Visit(browser) as visit:
        visit.page.goto(f"{service}/redoc")
        expect(visit.page.get_by_role("heading", name=re.compile("beamstream request service"))).to_be_visible()
        expect(visit.page.get_by_text("/v1/streams").first).to_be_attached()
        assert visit.errors == [] and visit.left == []
        assert f"{service}{ASSETS_URL}/redoc.standalone.js" in visit.made


def test_the_home_page_leads_to_the_docs(service, browser):
    from playwright.sync_api import expect

    with Visit(browser) as visit:
        visit.page.goto(f"{service}/")
        expect(visit.page.get_by_role("heading", name=re.compile("beamstream request service"))).to_be_visible()
        visit.page.get_by_role("link", name="/docs").click()
        expect(visit.page.locator(".opblock-summary-path[data-path='/v1/streams']").first).to_be_visible()
        assert visit.page.url == f"{service}/docs"
        assert visit.errors == [] and visit.left == []
