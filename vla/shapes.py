"""One shape check for every boundary (FeatureMap output, Policy input, server input).

``check_shape("actions", x, "B H D", B=8, H=50)`` raises
``ValueError: actions: expected (B=8, H=50, D=*), got (8, 49, 7)``.
Letters that are not given are free but must be consistent within one call.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_shape(key: str, x, spec: str, **dims: int) -> dict[str, int]:
    """Check ``x.shape`` against a space-separated letter spec; return the bound sizes.

    A letter may be an integer literal ("3") for a fixed size. Raises ValueError naming ``key``.
    """
    letters = spec.split()
    shape = tuple(getattr(x, "shape", ()))
    expected = ", ".join(
        f"{letter}={dims[letter]}" if letter in dims else (letter if letter.isdigit() else f"{letter}=*")
        for letter in letters
    )
    if len(shape) != len(letters):
        raise ValueError(f"{key}: expected ({expected}), got {shape}")
    bound = dict(dims)
    for letter, size in zip(letters, shape, strict=True):
        want = int(letter) if letter.isdigit() else bound.get(letter)
        if want is not None and want != size:
            raise ValueError(f"{key}: expected ({expected}), got {shape}")
        if not letter.isdigit():
            bound[letter] = size
    return bound


def check_keys(where: str, mapping, required: Sequence[str]) -> None:
    """Raise KeyError naming every missing key at once (and what is present)."""
    missing = [k for k in required if k not in mapping]
    if missing:
        raise KeyError(f"{where}: missing key(s) {missing}; present: {sorted(mapping)}")
