"""``Mix``: a validated ``{signature name: alpha}``; parsed once, trusted afterwards."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from rws_hub.errors import InvalidMixError, shorten

__all__ = ["Mix", "format_alpha", "as_alpha", "DEFAULT_MAX_ALPHA"]

DEFAULT_MAX_ALPHA = 10.0
"""The bound on ``|alpha|`` every serving path (engine, REST, demo, torch.hub) applies unless
configured otherwise: ten times a signature's full strength is far past any useful patch, and
far below where float32 weights overflow."""

_FORBIDDEN_IN_NAMES = ",:"


def format_alpha(alpha: float) -> str:
    """Shortest text for an alpha that reads back to the same float (``1``, ``0.5``, ``1e-07``)."""
    short = f"{alpha:g}"
    return short if float(short) == alpha else repr(float(alpha))


def as_alpha(name: str, value: Any) -> float:
    """``value`` as a float alpha: numbers, numpy scalars and 0-d tensors; never bools or
    strings (``InvalidMixError`` naming the signature otherwise). Finiteness is not checked."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # 0-d tensors and numpy scalars are Real-like enough if they convert cleanly
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            try:
                item = value.item()
            except (TypeError, ValueError, RuntimeError):
                item = None
            if isinstance(item, numbers.Real) and not isinstance(item, bool):
                return float(item)
        raise InvalidMixError(
            f"alpha for {shorten(name)} must be a number, got {type(value).__name__} {shorten(value)}"
        )
    return float(value)


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidMixError(
            f"signature names must be strings, got {type(name).__name__} {shorten(name)}"
        )
    stripped = name.strip()
    if not stripped:
        raise InvalidMixError("empty signature name in mix")
    if any(c in stripped for c in _FORBIDDEN_IN_NAMES):
        raise InvalidMixError(f"signature name {shorten(stripped)} may not contain ',' or ':'")
    return stripped


def _checked(
    pairs: Iterable[tuple[Any, Any]],
    *,
    known: Collection[str] | None = None,
    max_alpha: float | None = None,
    allow_negative: bool = True,
) -> dict[str, float]:
    """``{name: alpha}`` from ``(name, alpha)`` pairs, each checked in turn: name, duplicate,
    ``known`` (when given), number, finite, sign (unless ``allow_negative``), ``max_alpha``."""
    checked: dict[str, float] = {}
    for raw_name, value in pairs:
        name = _check_name(raw_name)
        if name in checked:
            raise InvalidMixError(f"signature {shorten(name)} appears twice in the mix")
        if known is not None and name not in known:
            listing = ", ".join(sorted(known)) if known else "none are loaded"
            raise InvalidMixError(f"unknown signature {shorten(name)}; known: {listing}")
        alpha = as_alpha(name, value)
        if not math.isfinite(alpha):
            raise InvalidMixError(f"alpha for {shorten(name)} must be finite, got {alpha}")
        if alpha < 0 and not allow_negative:
            raise InvalidMixError(
                f"alpha for {shorten(name)} is negative ({alpha}); not allowed here"
            )
        if max_alpha is not None and abs(alpha) > max_alpha:
            raise InvalidMixError(
                f"alpha for {shorten(name)} is {format_alpha(alpha)}, above the maximum "
                f"{format_alpha(max_alpha)}"
            )
        checked[name] = alpha
    return checked


class Mix(Mapping[str, float]):
    """An immutable, validated mapping ``signature name -> alpha`` (finite floats).

    Build one with :meth:`Mix.parse` (which validates against the loaded signatures and
    limits) or ``Mix({"fog": 1.0})``. A Mix is hashable (use it as a cache key), iterates in
    sorted name order, and ``str(mix)`` is canonical: ``"fog:1,gaussian_noise:0.5"``. The
    empty mix is the clean model.
    """

    __slots__ = ("_dict", "_hash")

    def __init__(self, alphas: Mapping[str, float] | None = None) -> None:
        self._set(_checked((alphas or {}).items()))

    def _set(self, alphas: Mapping[str, float]) -> None:
        """Hold already validated ``alphas`` (sorted by name)."""
        self._dict: dict[str, float] = dict(sorted(alphas.items()))
        self._hash = hash(tuple(self._dict.items()))

    @classmethod
    def _trusted(cls, alphas: Mapping[str, float]) -> Mix:
        """A Mix of ``alphas`` that were validated already (no second pass)."""
        mix = cls.__new__(cls)
        mix._set(alphas)
        return mix

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def empty(cls) -> Mix:
        """The empty mix (the clean model)."""
        return cls()

    @classmethod
    def parse(
        cls,
        obj: Any,
        *,
        known: Collection[str] | None = None,
        defaults: Mapping[str, float] | None = None,
        max_alpha: float | None = None,
        allow_negative: bool = False,
    ) -> Mix:
        """Validate a mix given in any of the accepted forms.

        Accepted ``obj``:

        * ``{"fog": 1.0, "gaussian_noise": 0.5}``
        * ``["fog", "gaussian_noise"]`` (alpha from ``defaults``, else 1.0), or a list of
          ``[name, alpha]`` pairs
        * ``"fog:1,gaussian_noise:0.5"`` or ``"fog,gaussian_noise"`` (spaces are ignored)
        * ``None``, ``""``, ``{}``, ``[]``: the empty mix (clean model)
        * a ``Mix`` (validated again against the limits given)

        Checks (each raises :class:`~rws_hub.errors.InvalidMixError` naming the problem):
        unknown name when ``known`` is given (the message lists the known ones), duplicate
        name, non-numeric alpha, NaN/inf, negative alpha unless ``allow_negative``, ``|alpha|``
        above ``max_alpha``.
        """
        defaults = defaults or {}
        pairs: list[tuple[Any, Any]]
        if obj is None:
            pairs = []
        elif isinstance(obj, Mix):
            pairs = list(obj.items())
        elif isinstance(obj, str):
            pairs = cls._pairs_from_string(obj, defaults)
        elif isinstance(obj, Mapping):
            pairs = list(obj.items())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            pairs = []
            for item in obj:
                if isinstance(item, str):
                    name = _check_name(item)
                    pairs.append((name, defaults.get(name, 1.0)))
                elif isinstance(item, (list, tuple)) and len(item) == 2:
                    pairs.append((item[0], item[1]))
                else:
                    raise InvalidMixError(
                        "a mix list holds signature names or [name, alpha] pairs, "
                        f"got {type(item).__name__} {shorten(item)}"
                    )
        else:
            raise InvalidMixError(
                "a mix is a dict {name: alpha}, a list of names, a string 'a:1,b:0.5' or "
                f"None, not {type(obj).__name__}"
            )
        return cls._trusted(
            _checked(pairs, known=known, max_alpha=max_alpha, allow_negative=allow_negative)
        )

    @staticmethod
    def _pairs_from_string(text: str, defaults: Mapping[str, float]) -> list[tuple[str, Any]]:
        text = text.strip()
        if not text:
            return []
        pairs: list[tuple[str, Any]] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise InvalidMixError(f"empty entry in mix {shorten(text)}")
            if ":" in part:
                name, _, value = part.partition(":")
                name = name.strip()
                try:
                    alpha = float(value.strip())
                except ValueError:
                    raise InvalidMixError(
                        f"alpha for {shorten(name)} is not a number: {shorten(value.strip())}"
                    ) from None
                pairs.append((name, alpha))
            else:
                pairs.append((part, defaults.get(part, 1.0)))
        return pairs

    # -- mapping protocol -----------------------------------------------------------------
    def __getitem__(self, name: str) -> float:
        return self._dict[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mix):
            return self._dict == other._dict
        if isinstance(other, Mapping):
            return self._dict == dict(other)
        return NotImplemented

    @property
    def is_empty(self) -> bool:
        """True when no signature is selected (the clean model)."""
        return not self._dict

    @property
    def names(self) -> tuple[str, ...]:
        """Signature names, sorted."""
        return tuple(self._dict)

    def without_zeros(self) -> Mix:
        """This mix less its zero alphas (``self`` when it has none)."""
        if all(a != 0.0 for a in self._dict.values()):
            return self
        return Mix._trusted({n: a for n, a in self._dict.items() if a != 0.0})

    def __str__(self) -> str:
        return ",".join(f"{n}:{format_alpha(a)}" for n, a in self._dict.items())

    def __repr__(self) -> str:
        return f"Mix({str(self)!r})"
