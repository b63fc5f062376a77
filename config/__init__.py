"""Configuration: settings from the environment, the Redis key layout, the Celery app."""

from config.keys import KeySpace, Scope
from config.settings import ConfigurationError, Settings, get_settings

__all__ = ["ConfigurationError", "KeySpace", "Scope", "Settings", "get_settings"]
