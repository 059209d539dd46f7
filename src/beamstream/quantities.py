"""Units: the few that beamstream converts, to SI (J for energies, m for lengths)."""

from __future__ import annotations

ELECTRONVOLT = 1.602176634e-19  # J
TO_SI = {
    "J": 1.0, "eV": ELECTRONVOLT, "keV": 1e3 * ELECTRONVOLT,
    "m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "nm": 1e-9, "A": 1e-10, "Å": 1e-10,
    "angstrom": 1e-10,
}
ENERGIES = {"J", "eV", "keV"}


def to_si(value: float, unit: str) -> tuple[float, str] | None:
    """``value`` in ``unit`` as (value, ``"J"`` or ``"m"``); None for a unit not known here."""
    if unit not in TO_SI:
        return None
    return value * TO_SI[unit], "J" if unit in ENERGIES else "m"
