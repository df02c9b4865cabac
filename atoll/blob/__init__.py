"""The Azure Blob front end: a thin adapter over ``atoll.core.namespace.Namespace``, like ``atoll.s3``."""
