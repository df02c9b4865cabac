"""Fixtures of the Azure Blob endpoint's tests.

``blob_server`` is the session's Atoll (``atoll`` in tests/conftest.py): every AtollProcess serves Blob on its own
free ``blob_port`` with the root account ``account_name`` / ``account_key``, so ``blob_service`` (Shared Key, path
style ``http://127.0.0.1:PORT/ACCOUNT``) and ``s3`` (boto3) reach the same namespace. ``azurite`` (the reference
emulator, from tests/cold_fixtures.py) runs the same scenarios where it supports them. Helpers: blobutil.py.
"""

from __future__ import annotations

import pytest

from blobutil import blob_service_for
from harness import AtollProcess


@pytest.fixture(scope="session")
def blob_server(atoll) -> AtollProcess:
    return atoll


@pytest.fixture
def blob_service(blob_server):
    return blob_service_for(blob_server)
