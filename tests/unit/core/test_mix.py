"""Mix: parsing, validation, canonical form, hashing."""

from __future__ import annotations

import math

import pytest
import torch

from rws_hub import InvalidMixError, Mix


def test_forms_agree() -> None:
    expected = {"fog": 1.0, "gaussian_noise": 0.5}
    assert dict(Mix.parse({"gaussian_noise": 0.5, "fog": 1})) == expected
    assert dict(Mix.parse("fog:1, gaussian_noise:0.5")) == expected
    assert dict(Mix.parse([["fog", 1], ("gaussian_noise", 0.5)])) == expected
    assert dict(Mix.parse(["fog", "gaussian_noise"], defaults={"gaussian_noise": 0.5})) == expected
    assert dict(Mix.parse("fog,gaussian_noise", defaults={"gaussian_noise": 0.5})) == expected
    assert dict(Mix.parse(Mix(expected))) == expected
    assert dict(Mix.parse({"fog": torch.tensor(1.0), "gaussian_noise": 0.5})) == expected


@pytest.mark.parametrize("empty", [None, "", "  ", {}, [], Mix.empty()])
def test_empty(empty: object) -> None:
    mix = Mix.parse(empty)
    assert mix.is_empty and len(mix) == 0 and str(mix) == "" and mix == Mix.empty()


def test_canonical_str_and_hash() -> None:
    a = Mix.parse("b:0.5,a:1")
    b = Mix.parse({"a": 1.0, "b": 0.5})
    assert str(a) == "a:1,b:0.5" and list(a) == ["a", "b"]
    assert a == b and hash(a) == hash(b)
    cache = {a: "x"}
    assert cache[b] == "x"
    assert Mix.parse(str(Mix({"x": 1 / 3}))) == Mix({"x": 1 / 3})  # lossless text
    assert repr(a) == "Mix('a:1,b:0.5')"
    assert a.names == ("a", "b")


def test_immutable() -> None:
    mix = Mix({"a": 1.0})
    with pytest.raises(TypeError):
        mix["a"] = 2.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("obj", "kwargs", "message"),
    [
        ({"nope": 1.0}, {"known": ["fog", "snow"]}, "unknown signature 'nope'; known: fog, snow"),
        ("fog:1,fog:2", {}, "appears twice"),
        (["fog", "fog"], {}, "appears twice"),
        ({"fog": math.nan}, {}, "finite"),
        ({"fog": math.inf}, {}, "finite"),
        ("fog:inf", {}, "finite"),
        ({"fog": -0.5}, {}, "negative"),
        ({"fog": 3.0}, {"max_alpha": 2.0}, "above the maximum 2"),
        ("fog:abc", {}, "not a number"),
        ({"fog": "0.5"}, {}, "must be a number"),
        ({"fog": True}, {}, "must be a number"),
        (42, {}, "not int"),
        ([42], {}, "names or"),
        ({"": 1.0}, {}, "empty signature name"),
        ("fog:1,,snow", {}, "empty entry"),
        ({1: 1.0}, {}, "must be strings"),
    ],
)
def test_refusals(obj: object, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidMixError, match=message.replace("(", r"\(")):
        Mix.parse(obj, **kwargs)


def test_negative_when_allowed_and_known_empty() -> None:
    assert Mix.parse({"fog": -0.5}, allow_negative=True)["fog"] == -0.5
    with pytest.raises(InvalidMixError, match="above the maximum"):
        Mix.parse({"fog": -3}, allow_negative=True, max_alpha=2)
    with pytest.raises(InvalidMixError, match="none are loaded"):
        Mix.parse("fog", known=[])


def test_constructor_validates() -> None:
    with pytest.raises(InvalidMixError):
        Mix({"fog": float("nan")})


def test_error_messages_echo_client_input_bounded() -> None:
    from rws_hub.errors import MAX_MESSAGE, RequestError

    huge = "x" * 5_000_000
    for bad in (f"{huge}:1", {huge: 1.0}, {"fog": huge}):
        with pytest.raises(InvalidMixError) as info:
            Mix.parse(bad, known={"fog"})
        assert len(str(info.value)) < 300, len(str(info.value))
    assert len(str(RequestError("y" * 10**6))) <= MAX_MESSAGE
    assert len(str(InvalidMixError("z" * 10**6))) <= MAX_MESSAGE
