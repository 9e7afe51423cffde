"""Benchmarks for django-tether: each prints ratios against a baseline measured in the same run.

``bench/ingest.py`` measures the inbound webhook view under gunicorn and the end-to-end path
through Celery; ``bench/outbound.py`` measures ``ServiceClient`` calls. ``bench`` is also a tiny
Django app (a bare baseline view, the floor view of receiving, a no-op webhook handler and a
no-op Celery task) installed only by ``bench.settings``.

``bench/chaos.py`` is the chaos soak (``make chaos``): a real stack under piled-up faults, with
its settings (``bench.chaos_settings``), vendor (``bench/chaos_vendor.py``), faults
(``bench/nemesis.py``) and handler app (``bench.ledger``).
"""
