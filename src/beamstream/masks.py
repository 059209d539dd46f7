"""Mask conventions: which pixels a mask marks bad, said wherever a mask is held.

There are two (docs/conventions.md, Masks): ``zero-is-bad`` (psana: 0 marks a bad pixel) and
``nonzero-is-bad`` (CXI/NeXus ``pixel_mask``: any non-zero bit marks a bad pixel). A stream
says a mask field's convention in the field's description entry (``mask``); an HDF5 dataset
says it in its ``mask_convention`` attribute, which the files sink's ``cxi`` layout writes on
every mask it holds. Whoever reads a mask takes the convention from there, and converts by it
with :func:`bad_pixels`; a convention that contradicts the one the mask states is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

MaskConvention = Literal["zero-is-bad", "nonzero-is-bad"]
CONVENTIONS: tuple[str, ...] = get_args(MaskConvention)
ATTRIBUTE = "mask_convention"
"""The HDF5 attribute of a mask dataset naming its convention."""
STANDARD_NAMES = ("pixel_mask", "mask")
"""Names CXI and NeXus give masks whose non-zero values mark bad pixels."""


def stated(attrs: Mapping[str, Any], where: str) -> str | None:
    """The convention HDF5 attributes ``attrs`` (of the dataset at ``where``) state, None if they state none.

    Raises ValueError naming ``where`` when the attribute holds neither convention.
    """
    value = attrs.get(ATTRIBUTE)
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    if text not in CONVENTIONS:
        raise ValueError(f"{where} has {ATTRIBUTE}={text!r}, which is neither {' nor '.join(CONVENTIONS)}; "
                         "fix the attribute")
    return text


def by_name(dataset: str) -> str:
    """``nonzero-is-bad`` for a dataset named as CXI and NeXus name masks (``…/pixel_mask``, ``…/mask``), else ''."""
    return "nonzero-is-bad" if dataset.rsplit("/", 1)[-1] in STANDARD_NAMES else ""


def bad_pixels(mask: np.ndarray, convention: str) -> np.ndarray:
    """True where ``mask``, in ``convention``, marks a bad pixel."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown mask convention {convention!r}; use {' or '.join(CONVENTIONS)}")
    return np.asarray(mask) == 0 if convention == "zero-is-bad" else np.asarray(mask) != 0


def padding(valid: Sequence[Sequence[int]] | None, shape: tuple[int, ...], where: str) -> np.ndarray | None:
    """True at the pixels of an event of ``shape`` outside ``valid`` (a field's real pixels once a ``pad`` step
    added some: one ``[start, stop]`` per event axis, its ``valid`` description entry); None when ``valid`` is
    empty (every pixel real). ValueError, naming ``where``, when ``valid`` does not fit ``shape``."""
    if not valid:
        return None
    if len(valid) != len(shape) or any(not 0 <= start <= stop <= size for (start, stop), size in zip(valid, shape)):
        raise ValueError(f"{where}: the real pixels {[list(pair) for pair in valid]} do not fit events of shape "
                         f"{shape}")
    outside = np.ones(shape, dtype=bool)
    outside[tuple(slice(start, stop) for start, stop in valid)] = False
    return outside
