"""Dagster assets: thin adapters from Dagster config to one lmcore call each.

An asset takes paths from resources, converts its ``dg.Config`` to the lmcore dataclass
in one place, calls one lmcore function into a staging directory, publishes it
content-addressed, and returns a small manifest plus metadata (counts, digests, plots).
"""
