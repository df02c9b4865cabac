"""Fixtures for the S3 semantics suite (helpers are in s3util.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def other_user(atoll):
    """A second, non-root identity and its client."""
    user = atoll.create_user("other-user")
    user["client"] = atoll.client(user["access_key_id"], user["secret_access_key"])
    return user
