"""Units: the few that beamstream converts, to SI (J for energies, m for lengths)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ELECTRONVOLT = 1.602176634e-19  # J
TO_SI = {
    "J": 1.0, "eV": ELECTRONVOLT, "keV": 1e3 * ELECTRONVOLT,
    "m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "nm": 1e-9, "A": 1e-10, "Å": 1e-10,
    "angstrom": 1e-10,
}
ENERGIES = {"J", "eV", "keV"}
PLANCK_EV_M = 6.62607015e-34 * 299_792_458 / ELECTRONVOLT
"""h·c in eV·m (exact SI constants): a photon of E eV has wavelength PLANCK_EV_M / E metres."""


def to_si(value: float, unit: str) -> tuple[float, str] | None:
    """``value`` in ``unit`` as (value, ``"J"`` or ``"m"``); None for a unit not known here."""
    if unit not in TO_SI:
        return None
    return value * TO_SI[unit], "J" if unit in ENERGIES else "m"


def photon_energy_ev(constants: Mapping[str, Any]) -> float | None:
    """The photon energy in eV that the constants (a description's ``{name: Quantity}``) ``photon_energy`` or
    ``wavelength`` give, if one does as a positive number in a unit known here."""
    for name in ("photon_energy", "wavelength"):
        quantity = constants.get(name)
        if quantity is not None and isinstance(quantity.value, (int, float)) and not isinstance(quantity.value, bool):
            converted = to_si(float(quantity.value), quantity.unit)
            if converted is not None and converted[0] > 0:
                value, unit = converted
                return value / ELECTRONVOLT if unit == "J" else PLANCK_EV_M / value
    return None
