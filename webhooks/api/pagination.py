"""Cursor pagination of webhook events, newest first by ``received_at``.

A cursor stays correct while events arrive (no duplicates or gaps between pages) and costs an
indexed range scan (``webhooks_ev_recv_id_idx``) whatever the depth.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination


class WebhookEventCursorPagination(CursorPagination):
    ordering = ("-received_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Any) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [f"Enter an integer from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def decode_cursor(self, request: Any) -> Any:
        try:
            return super().decode_cursor(request)
        except NotFound as exc:  # DRF answers 404 for a malformed cursor; it is a bad value
            raise ValidationError({self.cursor_query_param: [str(exc.detail)]}) from exc
