"""What the operator APIs of both apps share: ``base`` (settings-driven permissions and
throttles, model permissions per action, a 503 when the database is down) and ``fields``
(serializer fields). Needs ``djangorestframework``."""
