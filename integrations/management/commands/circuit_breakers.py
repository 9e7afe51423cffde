"""``circuit_breakers list|reset NAME|open NAME|disable NAME``: the admin's actions, from a shell.

``list`` is the per-service status view: every breaker, and every service configured in
``INTEGRATIONS["SERVICES"]`` (with no breaker yet: no call so far), each with its breaker state
and counts and, on the line below it, its fleet policies (rate limit used / limit, cool-down,
retry budget, bulkhead in use; ``integrations.fleet_status``).

Each action is recorded as a transition (actor ``cli:<OS user>``) and, in the same transaction,
as a ``LogEntry`` on the breaker (the admin's History) naming the ``--user`` given, or the
system user ``tether-system``.

Exit codes: 0 done; 2 bad usage (missing NAME or --reason, a --reason over 500 characters, an
unknown --user); 3 no breaker with that name; 4 bad --until (not ISO 8601, not in the future,
or more than 366 days ahead).
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.breaker import (
    OperatorAction,
    act_and_log,
    disable_breaker,
    force_open_breaker,
    reset_breaker,
)
from integrations.exceptions import BreakerNotFound, InvalidExpiry
from integrations.fleet_status import configured_services, fleet_status
from integrations.models import CircuitBreaker
from integrations.storage import LAST_ERROR_MAX
from tether.audit import EXIT_USAGE, add_user_argument, command_user, reason_argument
from tether.dates import parse_when

EXIT_UNKNOWN_BREAKER = 3
EXIT_BAD_DATE = 4
#: How the History names this way of acting.
VIA = "command circuit_breakers"
#: The longest --reason: the transition's ``reason`` column, as the admin and the API allow.
REASON_MAX = LAST_ERROR_MAX


def cli_actor() -> str:
    """``cli:`` plus the OS user running the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers) and no LOGNAME/USER
        user = os.environ.get("USER", "") or f"uid{os.getuid()}"
    return f"cli:{user}"


class Command(BaseCommand):
    help = (
        "List every service's circuit breaker and fleet policies (rate limit, cool-down, retry "
        "budget, bulkhead), or reset, force open or disable one. Each change is recorded "
        "as a transition with actor 'cli:<OS user>' and in the breaker's History (LogEntry) "
        "by --user. Exit codes: 0 done, 2 bad usage (an unknown --user too), "
        "3 unknown breaker, 4 bad --until."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "action",
            choices=("list", "reset", "open", "disable"),
            help="list every service's breaker and fleet policies; reset NAME (close it); "
            "open NAME (force open); disable NAME (let every call through).",
        )
        parser.add_argument("name", nargs="?", help="The breaker (service) name.")
        parser.add_argument(
            "--reason",
            type=reason_argument(REASON_MAX),
            default="",
            help="Why: recorded in the transition and the History (at most 500 characters). "
            "Required for open and disable; default for reset: 'reset'.",
        )
        add_user_argument(parser)
        parser.add_argument(
            "--until",
            default=None,
            help="open/disable only: ISO 8601 date or datetime when the breaker returns to "
            "closed by itself (default: never; a naive time is in the project's time zone).",
        )

    def handle(self, *args: Any, action: str, name: str | None, **options: Any) -> None:
        if action == "list":
            self._list()
            return
        if not name:
            raise CommandError(f"{action} needs a breaker NAME", returncode=EXIT_USAGE)
        reason = options["reason"].strip()
        until_text = options["until"]
        if action == "reset" and until_text:
            raise CommandError("--until applies to open and disable only", returncode=EXIT_USAGE)
        if action in ("open", "disable") and not reason:
            raise CommandError(f"{action} needs --reason TEXT", returncode=EXIT_USAGE)
        user = command_user(options, returncode=EXIT_USAGE)
        try:
            until = parse_when(until_text) if until_text else None
        except ValueError as exc:
            raise CommandError(f"--until {exc}", returncode=EXIT_BAD_DATE) from None
        actions: dict[str, OperatorAction] = {
            "reset": reset_breaker,
            "open": force_open_breaker,
            "disable": disable_breaker,
        }
        kwargs: dict[str, Any] = {} if action == "reset" else {"until": until}
        try:
            breaker = act_and_log(
                actions[action],
                name,
                user=user,
                via=VIA,
                actor=cli_actor(),
                reason=reason,
                **kwargs,
            )
        except BreakerNotFound as exc:
            known = ", ".join(CircuitBreaker.objects.values_list("name", flat=True)[:20])
            raise CommandError(
                f"{exc}; known breakers: {known or '(none yet)'}",
                returncode=EXIT_UNKNOWN_BREAKER,
            ) from None
        except InvalidExpiry as exc:
            raise CommandError(f"--until: {exc}", returncode=EXIT_BAD_DATE) from None
        expiry = f" until {breaker.forced_until.isoformat()}" if breaker.forced_until else ""
        self.stdout.write(self.style.SUCCESS(f"{breaker.name}: {breaker.state}{expiry}"))

    def _list(self) -> None:
        rows = {row.name: row for row in CircuitBreaker.objects.order_by("name")}
        names = sorted(set(rows) | set(configured_services()))
        header = (
            f"{'NAME':<30} {'STATE':<12} {'CONSEC':>6} {'FAILURES':>9} {'SUCCESSES':>10}  "
            "OPENED AT / UNTIL  LAST ERROR"
        )
        self.stdout.write(header)
        if not names:
            self.stdout.write("(no circuit breakers yet: one is created on a service's first call)")
        for name in names:
            row = rows.get(name)
            if row is None:
                self.stdout.write(f"{name:<30} {'(no call yet)':<12}")
            else:
                when = row.forced_until or row.opened_at
                self.stdout.write(
                    f"{row.name:<30} {row.state:<12} {row.consecutive_failures:>6} "
                    f"{row.total_failures:>9} {row.total_successes:>10}  "
                    f"{when.isoformat(timespec='seconds') if when else '-'}  "
                    f"{row.last_error or '-'}"
                )
            status = fleet_status(name)
            if status.active:
                self.stdout.write(f"{'':<4}fleet: {status.summary()}")
