"""Fake musubi_tuner.cache_text_encoder_outputs (test double)."""

from musubi_tuner._fake_common import empty_parser as setup_parser_common  # noqa: F401
