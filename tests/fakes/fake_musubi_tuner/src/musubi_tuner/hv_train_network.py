"""Fake musubi_tuner.hv_train_network (test double): re-exports the common training parser."""

from musubi_tuner.training.parser_common import setup_parser_common  # noqa: F401
