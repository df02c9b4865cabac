"""Metadata: identities, buckets, objects, uploads, garbage. ``base`` states the contract; ``sqlite`` is the
embedded default (PostgreSQL follows for many nodes)."""
