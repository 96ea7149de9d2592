"""Planners every target reuses: sources + patches, PGO (instrument -> train -> merge -> use), BOLT, training tasks."""
