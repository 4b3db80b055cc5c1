"""Shared pytest setup: every test runs in fast mode unless it says otherwise."""

import os

os.environ.setdefault("LLM_COURSE_FAST", "1")
