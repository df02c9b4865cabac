"""Object bytes: where blobs live. ``base`` states the contract, ``files`` is the local-directory store."""
