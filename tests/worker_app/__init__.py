"""A test-only app loaded by the worker that worker tests start: handlers driven by payloads."""
