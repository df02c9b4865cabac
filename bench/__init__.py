"""Atoll's benchmark harness (run with `bash bench/run.sh` or `make bench`; see bench/README.md)."""
