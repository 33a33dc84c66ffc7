"""Fake musubi_tuner.cache_latents (test double)."""

from musubi_tuner._fake_common import empty_parser as setup_parser_common  # noqa: F401
