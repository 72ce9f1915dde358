"""Browser-test fixtures: Debian's chromium driven by Playwright against the real service on loopback.

Import the fixtures you use into the test module (``from browser_support import browser, page, ...``).

* **chromium**: ``/usr/bin/chromium`` (Debian's package; ``.ci/run`` installs it). Playwright never
  downloads a browser here: it launches that executable, headless, with the flags this machine's closed
  network needs (no background networking, no component updates, no QUIC) and a fresh temporary profile
  (Playwright makes a new empty ``--user-data-dir`` per launch). No chromium, or no ``playwright`` package:
  every browser test is skipped with the reason, so a laptop without them still passes; with
  ``CDS_BROWSER_REQUIRED=1`` (``.ci/run`` once it has installed chromium, ``make screenshots``) that is an
  error instead, so CI cannot pass by skipping them.
* **one browser per session** (``browser``), a new context and page per test (``page``), so tests share
  no cookies; waits are Playwright's auto-waiting locators (no sleeps).
* **servers** (one each per session, real threaded HTTP servers on 127.0.0.1, ephemeral ports): the
  service (``service``: the Flask app of ``tests/conftest.build_app`` behind werkzeug's threaded server,
  its ``public_base_url`` its own URL), the loopback FHIR server (``fhir``: ``tests/fhir_server``) holding
  the example patient of :data:`PATIENT_EXAMPLE`, reset to it before each test (``patient_data``), and the
  loopback SMART authorization server (``auth``: ``tests/smart_auth_server``).
* **artefacts**: a failed test's page is saved as ``<artefacts>/<test>-failed.png``; :func:`shoot` saves
  named screenshots of the main tests. ``<artefacts>`` is ``var/test-artefacts/`` (gitignored) or
  ``CDS_TEST_ARTEFACTS``; with ``CDS_SCREENSHOTS_DIR`` set (``make screenshots`` sets ``docs/img``) the
  named screenshots are also written there, for the documentation.
* **axe-core and marked from npm**, installed on first use into a cache folder outside the repository
  (``CDS_NPM_CACHE`` or ``~/.cache/lbp-cds/npm``), never vendored: axe-core checks the app pages
  (:func:`serious_violations`), marked renders card markdown as the CDS Hooks sandbox does. No npm or no
  registry: the tests that need them are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTEFACTS = Path(os.environ.get("CDS_TEST_ARTEFACTS") or ROOT / "var" / "test-artefacts")
#: the example whose patient the loopback FHIR server holds (three bird-dog sessions, latest 20 and 18 reps)
PATIENT_EXAMPLE = "bird-dog-20-18"
#: npm packages the browser tests load into pages, with the file each one's page script is in
NPM_PACKAGES = {
    "axe-core": ("axe-core@^4.10", "axe.min.js"),
    "marked": ("marked@^15", "marked.min.js"),
}
VIEWPORT = {"width": 1280, "height": 900}


def browser_unavailable() -> str | None:
    """Why browser tests cannot run here, or None."""
    reason = _why_no_browser()
    if reason and os.environ.get("CDS_BROWSER_REQUIRED") == "1":
        raise RuntimeError(f"CDS_BROWSER_REQUIRED=1 but the browser tests cannot run: {reason}")
    return reason


def _why_no_browser() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (Debian package chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


#: mark a test module with it: ``pytestmark = requires_browser``
requires_browser = pytest.mark.skipif(browser_unavailable() is not None, reason=browser_unavailable() or "")


# --------------------------------------------------------------------------------------------------
# Browser and page


# Module scope, not session: Playwright's sync API runs an event loop in the main thread while it is open,
# so a session-long browser would make every later test's asyncio.run() fail ("a running event loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def artefact_name(nodeid: str) -> str:
    """A file-name-safe form of a test id (``tests/test_x.py::test_y[a]`` -> ``test_x-test_y-a``)."""
    stem = nodeid.split("/")[-1].replace(".py::", "-").replace("::", "-")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")


@pytest.fixture
def page(browser, request) -> Iterator[Any]:
    """A page in a fresh context (no cookies shared between tests); a screenshot if the test failed.

    The pages' Content-Security-Policy is enforced, except in a test that uses ``axe_script``: the app's CSP
    (rightly) refuses the injected axe-core script, so those tests' context bypasses it."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC",
                                  bypass_csp="axe_script" in request.fixturenames)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    failed_before = request.session.testsfailed
    try:
        yield pg
    finally:
        # the call phase's report is logged before teardown: a failure has already been counted
        if request.session.testsfailed > failed_before and not pg.is_closed():
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            try:
                pg.screenshot(path=str(ARTEFACTS / f"{artefact_name(request.node.nodeid)}-failed.png"), full_page=True)
            except Exception as exc:  # pragma: no cover - a crashed page: say so, keep the test's own failure
                print(f"no failure screenshot: {exc}")
        context.close()


def shoot(pg: Any, name: str, *, selector: str | None = None) -> Path:
    """Save a named screenshot (``<name>.png``) of the page, or of one element, as a test artefact, and
    into ``CDS_SCREENSHOTS_DIR`` when set (the documentation's images). Returns the artefact's path."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    target = pg.locator(selector) if selector else pg
    if selector:
        target.screenshot(path=str(path), animations="disabled")
    else:
        target.screenshot(path=str(path), full_page=True, animations="disabled")
    docs_dir = os.environ.get("CDS_SCREENSHOTS_DIR")
    if docs_dir:
        Path(docs_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(docs_dir) / path.name)
    assert path.stat().st_size > 0
    return path


# --------------------------------------------------------------------------------------------------
# npm packages (axe-core, marked): installed on first use into a cache folder outside the repository


def npm_cache() -> Path:
    return Path(os.environ.get("CDS_NPM_CACHE") or Path.home() / ".cache" / "lbp-cds" / "npm")


def npm_script(package: str) -> Path:
    """The page script of an npm package of :data:`NPM_PACKAGES`, installed into :func:`npm_cache` if missing
    (all of them in one ``npm install``: npm prunes what a later install does not name); skips the test
    (with the reason) when npm is missing or the install fails."""
    folder = npm_cache()
    scripts = {name: folder / "node_modules" / name / filename for name, (_, filename) in NPM_PACKAGES.items()}
    if scripts[package].exists():
        return scripts[package]
    npm = shutil.which("npm")
    if npm is None:
        _skip(f"npm is not installed: {package} cannot be fetched from the npm registry")
    folder.mkdir(parents=True, exist_ok=True)
    specs = [spec for spec, _ in NPM_PACKAGES.values()]
    result = subprocess.run(
        [npm, "install", "--prefix", str(folder), "--no-save", "--no-audit", "--no-fund", "--loglevel=error", *specs],
        capture_output=True, text=True, timeout=300,
    )
    if scripts[package].exists():
        return scripts[package]
    _skip(f"npm install {' '.join(specs)} failed: {result.stderr.strip()[-300:]}")


def _skip(reason: str) -> NoReturn:
    """Skip the test, or fail it when ``CDS_BROWSER_REQUIRED=1``."""
    if os.environ.get("CDS_BROWSER_REQUIRED") == "1":
        pytest.fail(f"CDS_BROWSER_REQUIRED=1: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def axe_script() -> Path:
    return npm_script("axe-core")


@pytest.fixture(scope="session")
def marked_script() -> Path:
    return npm_script("marked")


#: axe-core rule tags checked: WCAG 2.0/2.1 A and AA (colour contrast, labels, landmarks, names...)
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


def axe_violations(pg: Any, axe_script: Path) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is now; its violations (each with ``id``, ``impact``, ``nodes``)."""
    pg.add_script_tag(path=str(axe_script))
    result = pg.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", AXE_TAGS)
    return list(result["violations"])


def serious_violations(pg: Any, axe_script: Path) -> list[str]:
    """axe-core violations of impact serious or critical, one readable line each (empty: none)."""
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:5]}"
        for v in axe_violations(pg, axe_script)
        if v.get("impact") in ("serious", "critical")
    ]


# --------------------------------------------------------------------------------------------------
# Servers


def example_request(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "fhir_examples" / "requests" / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def fhir() -> Iterator[Any]:
    """The loopback FHIR server (one per session; :func:`patient_data` resets its data per test)."""
    from fhir_server import FhirData, FhirTestServer

    with FhirTestServer(FhirData.from_hook_request(ROOT / "fhir_examples" / "requests" / f"{PATIENT_EXAMPLE}.json")) as server:
        yield server


@pytest.fixture
def patient_data(fhir) -> Any:
    """The FHIR server reset to the example patient only (what earlier tests wrote is gone); the server."""
    from fhir_server import FhirData

    fhir.reset()
    fhir.data = FhirData.from_hook_request(ROOT / "fhir_examples" / "requests" / f"{PATIENT_EXAMPLE}.json")
    return fhir


def patient_id() -> str:
    return str(example_request(PATIENT_EXAMPLE)["context"]["patientId"])


class LateApp:
    """A WSGI app bound after its server: the service's ``public_base_url`` is the server's own URL, known
    only once the server has its port."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)


#: the bearer token the SMART authorization server issues and the FHIR server requires
ACCESS_TOKEN = "browser-test-access-token"
#: the SMART app's client id (the service's default ``CDS_APP_CLIENT_ID``), registered at the auth server
CLIENT_ID = "lbp-cds-app"


def service_overrides(fhir_base: str) -> dict[str, Any]:
    """Settings of the served service beyond the test defaults: the SMART app on, allowed to launch
    against the loopback FHIR server only, demo mode on."""
    return {
        "app": True,
        "app_client_id": CLIENT_ID,
        "app_fhir_servers": (fhir_base,),
        "app_demo": True,
        "app_secret": "browser-tests-cookie-key-0123456789abcdef",
    }


@pytest.fixture(scope="session")
def service(fhir) -> Iterator[str]:
    """The service (fixture rule set, fixed evaluation date, auth off) on a real threaded loopback server;
    its base URL, which is also its ``public_base_url``."""
    from conftest import build_app
    from loopback import serve_wsgi

    late = LateApp()
    with serve_wsgi(late, name="browser-test-service") as base_url:
        late.app = build_app(public_base_url=base_url, **service_overrides(fhir.base_url))
        yield base_url


@pytest.fixture(scope="session")
def auth(fhir, service) -> Iterator[Any]:
    """The loopback SMART authorization server for the FHIR server (one per session): the app's client id
    and redirect URI registered, ``aud`` checked against the FHIR base, :data:`ACCESS_TOKEN` issued; a
    standalone launch selects the example patient."""
    from smart_auth_server import SmartAuthServer

    server = SmartAuthServer(client_id=CLIENT_ID, redirect_uri=service + "/app/callback", access_token=ACCESS_TOKEN,
                             fhir_base=fhir.base_url, standalone_patient=patient_id())
    with server:
        yield server


@pytest.fixture
def smart(patient_data, auth) -> Any:
    """Per test: the FHIR server holding only the example patient, requiring :data:`ACCESS_TOKEN` and
    serving the auth server's ``.well-known/smart-configuration``; the auth server's records cleared.
    Returns the FHIR server."""
    fhir = patient_data
    fhir.required_token = ACCESS_TOKEN
    fhir.smart_configuration = auth.configuration()
    fhir.created.clear()
    fhir.fail_posts_after = None
    auth.approve_page = False
    auth.requests.clear()
    auth.launches.clear()
    return fhir


def watch_errors(pg: Any) -> list[str]:
    """From now on, every console error (a Content-Security-Policy refusal, a failed stylesheet or image) and
    uncaught page error of ``pg``, as text, in the list returned. The browser's own ``/favicon.ico`` request
    is left out: the service serves no icon, and no page asks for one."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        url = message.location.get("url") or ""
        if message.type == "error" and not url.endswith("/favicon.ico"):
            errors.append(f"console: {message.text} ({url})")

    pg.on("console", on_console)
    pg.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    return errors
