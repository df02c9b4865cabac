"""Helpers of the Blob endpoint's tests (fixtures are in tests/blob/conftest.py)."""

from __future__ import annotations

from harness import AtollProcess


def blob_service_for(server: AtollProcess, **kwargs):
    """A sync BlobServiceClient with the root account's Shared Key, path style."""
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(server.blob_connection_string, **kwargs)


def aio_blob_service_for(server: AtollProcess, **kwargs):
    """An azure.storage.blob.aio BlobServiceClient (use it as an async context manager)."""
    from azure.storage.blob.aio import BlobServiceClient

    return BlobServiceClient.from_connection_string(server.blob_connection_string, **kwargs)
