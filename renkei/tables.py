"""Imports every domain's tables so ``Base.metadata`` is complete (for Alembic and tests)."""

from consumers.routing import models as routing_models  # noqa: F401
from producers import models as outbox_models  # noqa: F401
from renkei import crypto as crypto_models  # noqa: F401
from renkei.db import Base
from services.audit import models as audit_models  # noqa: F401
from services.auth import models as auth_models  # noqa: F401
from services.clients import models as client_models  # noqa: F401
from services.escalation import models as escalation_models  # noqa: F401
from services.intake import models as intake_models  # noqa: F401
from services.notifications import models as notification_models  # noqa: F401
from services.registry import models as registry_models  # noqa: F401
from services.review import models as review_models  # noqa: F401

metadata = Base.metadata
