"""The admin endpoint: a JSON API and Prometheus ``/metrics`` on ``admin_address``, served by the primary worker.

Nothing in this package is on the S3 request path. ``multiproc`` must stay free of prometheus_client imports:
``atoll serve`` calls it before anything else imports that library (which reads its settings at import time).
"""
