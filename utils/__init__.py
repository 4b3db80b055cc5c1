"""LLM Internals: the small package the course notebooks share.

Import what you need from its modules, e.g. ``from utils.runtime import get_device``.
Nothing heavy is imported here, so ``import utils`` stays instant.
"""

__version__ = "0.1.0"
