"""The whole SMART app stack on loopback, for tests that use a real HTTP client or a browser.

``smart_stack()`` starts the loopback FHIR server (data from a bundled example), the loopback SMART
authorization server, and the service itself on a real threaded HTTP server whose ``CDS_PUBLIC_BASE_URL``
is its own address (so the registered redirect URI is reachable from a browser)::

    with smart_stack() as stack:
        page.goto(stack.launch_url(app_context={"rung": "bird-dog"}))   # an EHR launch
        ...
        stack.fhir.created   # the Observations the app wrote

Every port comes from the OS (port 0).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from werkzeug.serving import make_server

try:
    from conftest import REQUESTS_DIR, build_app
    from fhir_server import FhirData, FhirTestServer
    from smart_auth_server import SmartAuthServer
except ImportError:  # pragma: no cover - run as a package
    from tests.conftest import REQUESTS_DIR, build_app
    from tests.fhir_server import FhirData, FhirTestServer
    from tests.smart_auth_server import SmartAuthServer

TOKEN = "stack-tok-4Rr9-SECRET-never-shown"
CLIENT_ID = "lbp-cds-app"


@dataclass
class Stack:
    public: str  # the service's base URL (CDS_PUBLIC_BASE_URL)
    fhir: FhirTestServer
    auth: SmartAuthServer
    app: Any
    patient_id: str

    def launch_url(self, *, app_context: dict[str, Any] | None = None, standalone: bool = False) -> str:
        """The URL an EHR opens for an EHR launch (or a standalone launch) of this patient."""
        query = {"iss": self.fhir.base_url}
        if not standalone:
            query["launch"] = self.auth.new_launch(self.patient_id, app_context=app_context)
        return f"{self.public}/app/launch?{urlencode(query)}"


@contextmanager
def smart_stack(example: str = "bird-dog-28-27", *, approve_page: bool = False, **settings: Any) -> Iterator[Stack]:
    """The stack on the bundled example ``example`` (``settings``: test-settings overrides, e.g. ``rules_dir``)."""
    import json

    path = Path(REQUESTS_DIR) / f"{example}.json"
    patient_id = json.loads(path.read_text())["context"]["patientId"]
    holder: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda environ, start: holder["app"](environ, start), threaded=True)
    public = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, name="smart-stack-app", daemon=True)
    with FhirTestServer(FhirData.from_hook_request(path)) as fhir, SmartAuthServer(
        client_id=CLIENT_ID, redirect_uri=public + "/app/callback", access_token=TOKEN,
        fhir_base=fhir.base_url, standalone_patient=patient_id,
    ) as auth:
        fhir.required_token = TOKEN
        fhir.smart_configuration = auth.configuration()
        auth.approve_page = approve_page
        holder["app"] = build_app(app_fhir_servers=(fhir.base_url,), public_base_url=public, **settings)
        thread.start()
        try:
            yield Stack(public=public, fhir=fhir, auth=auth, app=holder["app"], patient_id=patient_id)
        finally:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()
