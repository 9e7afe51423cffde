"""ASGI entry point of the sandbox: ``uvicorn sandbox_project.asgi:application``
(``make run ASGI=1``). The receive URL is then served by the async view
(``WEBHOOKS["RECEIVE_VIEW"] = "auto"``), and ``WebhookBodyLimit`` keeps Django's handler from
reading more of a webhook's body than ``MAX_BODY_BYTES`` allows (docs/webhooks/asgi.md)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox_project.settings")

#: Django's own ASGI application, unwrapped (tests show what the wrapper changes).
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (after Django is set up)
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from webhooks.asgi import WebhookBodyLimit  # noqa: E402

# Static files (the admin's) as runserver serves them, in the sandbox's DEBUG mode only.
_served = ASGIStaticFilesHandler(django_application) if settings.DEBUG else django_application
application = WebhookBodyLimit(_served)
