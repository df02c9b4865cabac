"""The namespace and tiering core: buckets, objects, uploads. Knows nothing of HTTP or XML."""
