from tests.celery_worker import celery_worker

__all__ = ["celery_worker"]
