"""Fixtures of the WAN fault scenarios (helpers are in wanutil.py)."""

from __future__ import annotations

import pytest

from wanutil import ColdSites


@pytest.fixture
def cold_sites(request):
    """``cold_sites.make("s3" | "azure")``: a fresh container behind its own FaultProxy, deleted afterwards."""
    sites = ColdSites(request)
    yield sites
    sites.close()
