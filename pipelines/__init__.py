"""Wiring: Definitions, jobs, profiles and the ``lmpipe`` command line."""
