"""The hub's write and search endpoints, for the tests that throw input at every one of them."""

from __future__ import annotations

from services.registry.models import REGISTRY_TYPES
from tests.hubtools import HOSPITAL

PROCESS = "/fhir/$process-message"
REGION = ("region-office", "region-admin")

# Every route that takes a body: (method, path, who).
WRITES = [
    *(("POST", f"/fhir/{t}", REGION) for t in REGISTRY_TYPES),
    *(("PUT", f"/fhir/{t}/x1", REGION) for t in REGISTRY_TYPES),
    ("POST", PROCESS, (HOSPITAL, "system")),
    ("POST", "/admin/unmatched-events/e1/$link", REGION),
]
# Every paged search: (path, who).
SEARCHES = [
    *((f"/fhir/{t}", (HOSPITAL, "member")) for t in REGISTRY_TYPES),
    ("/fhir/Communication", (HOSPITAL, "member")),
    ("/admin/unmatched-events", REGION),
    ("/fhir/AuditEvent", ("region-office", "auditor")),
]
