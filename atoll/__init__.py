"""Atoll: a warm object tier for GPU clusters.

A local S3 endpoint (and later Azure Blob) on the cluster's own storage servers, in front of cold cloud
object stores. The public Python surface is small on purpose: the product is the server and its CLI.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
