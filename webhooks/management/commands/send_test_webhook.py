"""``manage.py send_test_webhook ENDPOINT``: sign a realistic sample event with the endpoint's
secret and POST it to a running server, like a vendor's CLI "trigger"; or, with ``--data``,
your own event (a JSON file or inline JSON), signed exactly as given.

Exit status: 0 when the answer is the expected one (2xx; 400 ``invalid_signature`` with
``--bad-signature``; ``duplicate`` for the second delivery with ``--duplicate``), 1 when it is
not, 2 for a usage or configuration error, 3 when the server cannot be reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhooks.exceptions import MalformedPayload, UnknownEndpoint, WebhookConfigurationError
from webhooks.management.arguments import EXIT_USAGE, event_identifier, known_endpoints
from webhooks.providers import get_provider
from webhooks.providers.base import load_json_object
from webhooks.testing import WebhookRequest, build_request, send_request

EXIT_UNEXPECTED = 1
EXIT_UNREACHABLE = 3


class Command(BaseCommand):
    help = (
        "Sign a sample event with ENDPOINT's secret and POST it to a running server; exit 0 if "
        "the answer is the expected one (1: unexpected answer, 2: usage/config error, "
        "3: server unreachable)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("endpoint", help="An endpoint name of WEBHOOKS['ENDPOINTS'].")
        parser.add_argument(
            "--url",
            default="http://127.0.0.1:8000",
            help="Base URL of the server; the endpoint's path is appended (default: %(default)s).",
        )
        parser.add_argument(
            "--type",
            dest="event_type",
            type=event_identifier,
            default=None,
            help="Event type of the sample (default: the provider's, e.g. "
            "payment_intent.succeeded for Stripe, ping for GitHub). With --data: the type for "
            "providers that read it from a header (see --data); others read the payload's.",
        )
        parser.add_argument(
            "--id",
            dest="event_id",
            type=event_identifier,
            default=None,
            help="Event id to send (default: a fresh one). With --data: the id for providers "
            "that read it from a header (see --data); others read the payload's.",
        )
        parser.add_argument(
            "--data",
            metavar="PAYLOAD",
            default=None,
            help="Send this payload instead of the provider's sample: inline JSON (a value "
            "that starts with '{' or '[') or the path of a JSON file. The body is signed exactly "
            "as given; it must be a JSON object no larger than the endpoint's MAX_BODY_BYTES. "
            "The event id and type are the payload's for Stripe (id, type) and Standard "
            "Webhooks (type); where a provider reads them from headers (GitHub: "
            "X-GitHub-Delivery and X-GitHub-Event; Standard Webhooks: webhook-id; an hmac "
            "endpoint's 'header:' EVENT_ID/EVENT_TYPE), they come from --id and --type, or a "
            "fresh id and the provider's default type (GitHub: ping; hmac: test.event) are sent.",
        )
        parser.add_argument(
            "--duplicate",
            action="store_true",
            help="Send the same delivery twice; the second answer must be 'duplicate'.",
        )
        parser.add_argument(
            "--bad-signature",
            action="store_true",
            help="Sign with a wrong secret; the answer must be 400 invalid_signature.",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=10.0,
            help="Seconds to wait for each answer (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        endpoint = options["endpoint"]
        try:
            provider = get_provider(endpoint)
            payload = None
            if options["data"] is not None:
                payload = read_payload(options["data"], provider.max_body_bytes)
            request = build_request(
                endpoint,
                payload,
                event_type=options["event_type"],
                event_id=options["event_id"],
                bad_signature=options["bad_signature"],
            )
        except UnknownEndpoint as exc:
            raise CommandError(
                f"unknown endpoint {endpoint!r}: not in WEBHOOKS['ENDPOINTS'] "
                f"({known_endpoints()})",
                returncode=EXIT_USAGE,
            ) from exc
        except WebhookConfigurationError as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from exc

        base = options["url"].rstrip("/")
        deliveries = 2 if options["duplicate"] else 1
        with httpx.Client(base_url=base, timeout=options["timeout"], trust_env=False) as client:
            for number in range(1, deliveries + 1):
                self.stdout.write(
                    f"POST {base}{request.path} ({request.event_type}, id {request.event_id})"
                )
                try:
                    response = send_request(client, request)
                except httpx.HTTPError as exc:
                    raise CommandError(
                        f"could not reach {base}: {type(exc).__name__}: {exc}",
                        returncode=EXIT_UNREACHABLE,
                    ) from exc
                self.stdout.write(f"-> {response.status_code} {response.text.strip()}")
                problem = self._unexpected(response, request, options, second=number == 2)
                if problem:
                    raise CommandError(problem, returncode=EXIT_UNEXPECTED)
        self.stdout.write(self.style.SUCCESS("OK: the answer is the expected one."))

    @staticmethod
    def _unexpected(
        response: httpx.Response, request: WebhookRequest, options: dict[str, Any], *, second: bool
    ) -> str | None:
        """Why the answer is not the expected one, or None if it is."""
        if options["bad_signature"]:
            if response.status_code != 400 or _json(response).get("error") != "invalid_signature":
                return f"expected 400 invalid_signature, got {response.status_code}"
            return None
        if not 200 <= response.status_code < 300:
            return f"expected a 2xx answer, got {response.status_code}"
        if second and _json(response).get("status") != "duplicate":
            return "expected the second delivery to be answered 'duplicate'"
        return None


def read_payload(value: str, limit: int) -> bytes:
    """The body ``--data`` gives: inline JSON (starting with ``{`` or ``[``) or a file's bytes,
    at most ``limit`` bytes (the endpoint's ``MAX_BODY_BYTES``; a file is never read further),
    and a JSON object by the rules the endpoint applies (``load_json_object``). ``CommandError``
    (usage) otherwise."""
    if value.lstrip().startswith(("{", "[")):
        source = "--data"
        try:
            body = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CommandError("--data is not valid UTF-8 text", returncode=EXIT_USAGE) from exc
    else:
        source = f"--data {value!r}"
        try:
            with Path(value).open("rb") as file:
                body = file.read(limit + 1)
        except OSError as exc:
            raise CommandError(
                f"{source}: cannot read the file ({exc.strerror or type(exc).__name__})",
                returncode=EXIT_USAGE,
            ) from exc
    if len(body) > limit:
        raise CommandError(
            f"{source}: the payload is larger than the endpoint's MAX_BODY_BYTES ({limit:,} "
            "bytes): the endpoint would refuse it (413)",
            returncode=EXIT_USAGE,
        )
    try:
        load_json_object(body)
    except MalformedPayload as exc:
        detail = f": {exc.__cause__}" if isinstance(exc.__cause__, ValueError) else ""
        raise CommandError(f"{source}: {exc}{detail}", returncode=EXIT_USAGE) from exc
    return body


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
