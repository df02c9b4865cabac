"""Cold stores: the object stores across the WAN that linked buckets tier to, reached through obstore."""
