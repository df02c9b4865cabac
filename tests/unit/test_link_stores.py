"""Which cold store a link gets in a worker whose link cache lags a re-link (pure logic, real obstore stores)."""

from __future__ import annotations

import pytest

from atoll import errors
from atoll.core.models import Link
from atoll.core.tiering.tier import Tiering, TierSettings
from atoll.stores.cold import links as cold_links


def test_a_stale_link_row_gets_the_bucket_s_newest_store_not_a_mix_of_old_options_and_new_secrets(tmp_path):
    tier = Tiering(None, None, TierSettings(secrets_path=str(tmp_path / "cold-secrets.json")))  # type: ignore[arg-type]
    old = Link(bucket="b", url="s3://cold/prefix", mode="writeback", created=1.0,
               options={"access_key_id": "AKIDEXAMPLE", "endpoint": "http://127.0.0.1:9", "region": "us-east-1"})
    tier.secrets.put("b", {"secret_access_key": "not-a-real-secret"})
    tier.store(old)
    # `atoll bucket link` in another process: the new link's secrets (none) first, then its row.
    tier.secrets.put("b", None)
    (tmp_path / "other").mkdir()
    new = Link(bucket="b", url=f"file://{tmp_path / 'other'}", mode="writeback", created=2.0)
    newest = tier.store(new)
    # The old row, still in a link cache, with the secrets on disk now, cannot be built...
    with pytest.raises(errors.InvalidArgument):
        cold_links.build(old.url, {**old.options, **tier.secrets.get("b")})
    # ...and is not: it resolves to where the bucket is linked now.
    assert tier.store(old) is newest
