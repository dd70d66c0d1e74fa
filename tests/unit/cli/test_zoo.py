"""``rws zoo build --help``: the defaults it shows are what a bare ``rws zoo build`` builds."""

from __future__ import annotations

import argparse

from rws_hub.cli.zoo import register
from rws_hub.zoo.pipeline import ZooSpec


def _help() -> str:
    parser = argparse.ArgumentParser(prog="rws")
    register(parser.add_subparsers())
    zoo = parser._subparsers._group_actions[0].choices["zoo"]  # noqa: SLF001
    build = zoo._subparsers._group_actions[0].choices["build"]  # noqa: SLF001
    return " ".join(build.format_help().split())


def test_help_shows_the_default_entrys_recipe_and_the_base_values() -> None:
    text = _help()
    entry, base = ZooSpec.for_entry(), ZooSpec()
    assert f"--name NAME default: {entry.name}" in text
    assert f"--layers LAYERS default: {entry.layers}" in text
    if entry.layers != base.layers:
        assert f"an unregistered --name: {base.layers})" in text
    assert f"--severity SEVERITY default: {entry.severity} " in text
