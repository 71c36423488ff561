"""Shared pytest configuration: one hypothesis profile, reproducible and without deadlines."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("p_rope", deadline=None, derandomize=True, max_examples=40, print_blob=True)
settings.load_profile("p_rope")
