"""``rws zoo build --help``: the defaults it shows are what a bare ``rws zoo build`` builds."""

from __future__ import annotations

import pytest

from rws_hub.cli import build_parser
from rws_hub.zoo.pipeline import ZooSpec


def _help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["zoo", "build", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_the_default_entrys_recipe_and_the_base_values(capsys) -> None:
    text = _help(capsys)
    entry, base = ZooSpec.for_entry(), ZooSpec()
    assert f"--name NAME default: {entry.name}" in text
    assert f"--layers LAYERS default: {entry.layers}" in text
    if entry.layers != base.layers:
        assert f"an unregistered --name: {base.layers})" in text
    assert f"--severity SEVERITY default: {entry.severity} " in text
