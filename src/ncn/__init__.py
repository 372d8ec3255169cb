"""Neuromodulatory Control Networks: a reproducible replication pipeline."""

__version__ = "0.1.0"
