"""Units of a stream's description, read by what they measure (pint) and converted to the units a file needs.

A constant's unit is read by pint, so any spelling pint knows works (``eV``, ``keV``, ``electronvolt``,
``J``; ``m``, ``mm``, ``um``, ``µm``, ``nm``, ``pm``, ``Å``, ``angstrom``), and so does ``A``, which
crystallographers write for ångström: here it is ångström, not ampere. Promises:

- a constant's unit is one pint knows, or ``""`` (none); any other is an error naming the constant, the
  unit and units it could be (:func:`description_problems`, run by ``spec check`` on a spec's
  ``metadata:`` and by each worker on the description it assembles), never a value quietly left out;
- the constants whose meaning beamstream knows (:data:`MEASURES`: ``photon_energy``, ``wavelength``) are
  numbers above 0 in a unit of their dimension: a photon energy in Å or a wavelength in eV is refused,
  not converted to something else; given both, they must agree (E = hc/λ);
- a field's ``distance`` and ``pixel_size`` are above 0;
- conversions go through pint, photon energy and wavelength into each other where a file needs the other
  one (:func:`photon_energy_ev`).

pint is imported, and its registry built (about a third of a second), when first needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from beamstream.errors import SpecError
from beamstream.wire.metadata import Quantity, RunMetadata

if TYPE_CHECKING:
    import pint

MEASURES = {"photon_energy": "[energy]", "wavelength": "[length]"}
"""The constants whose dimension beamstream knows and checks."""
KINDS = {"[energy]": "energy", "[length]": "length", "[time]": "time", "[current]": "electric current"}
EXAMPLES = {"[energy]": "eV, keV, electronvolt, J", "[length]": "m, mm, um, nm, pm, Å (or angstrom, A)"}
ALIASES = {"A": "angstrom"}
ELECTRONVOLT = 1.602176634e-19
"""J per eV (exact)."""
PLANCK_EV_M = 6.62607015e-34 * 299_792_458 / ELECTRONVOLT
"""h·c in eV·m (exact SI constants): a photon of E eV has wavelength PLANCK_EV_M / E metres."""
AGREEMENT = 1e-3
"""How far (relative) a description's ``photon_energy`` and ``wavelength`` may disagree."""
DEFINITIONS = ("ADU = [digital_signal] = adu", "photon = count", "sample = count", "event = count", "bin = count")
"""Units of detector data pint lacks: analog-to-digital units, and counts of photons, samples (``tof``'s), events
and bins (each also in the plural)."""


@cache
def registry() -> pint.UnitRegistry:
    """pint's registry of units with :data:`DEFINITIONS` (built once, on first use)."""
    import pint

    units = pint.UnitRegistry()
    for definition in DEFINITIONS:
        units.define(definition)
    return units


def unit_of(key: str, unit: str, dimension: str | None = None) -> pint.Unit:
    """``unit`` as pint reads it (``A``: ångström); SpecError naming ``key`` and units it could be (of
    ``dimension``, where known) if pint does not know it."""
    try:
        return registry().Unit(ALIASES.get(unit, unit))
    except Exception:  # noqa: BLE001 (pint's parser raises UndefinedUnitError for an unknown name, and
        # ValueError, AssertionError, ZeroDivisionError or a tokenize error for malformed text: all "not a unit")
        expected = EXAMPLES.get(dimension or MEASURES.get(key, ""), 'm, eV, pixel, ADU, photon, or "" for none')
        cased = [name for name in ("eV", "keV", "MeV", "J", "nm", "pm", "mm", "um") if name.lower() == unit.lower()]
        hint = f" (did you mean {cased[0]!r}?)" if cased else ""
        raise SpecError(f"{key!r}: unit {unit!r} is not a unit beamstream knows{hint}; write one such "
                        f"as {expected}") from None


def measured(key: str, quantity: Quantity, dimension: str | None = None) -> pint.Quantity:
    """``key``'s value as a pint quantity, checked: with a ``dimension`` (by default that of ``key`` in
    :data:`MEASURES`), a number above 0 in a unit of that dimension; without one, any value (then of
    magnitude 1: a text or a list is not converted) in a unit pint knows. SpecError saying what to write."""
    dimension = dimension or MEASURES.get(key)
    unit = unit_of(key, quantity.unit, dimension)
    if dimension is None:
        return registry().Quantity(1, unit)
    examples = EXAMPLES[dimension]
    if not quantity.unit:
        raise SpecError(f"{key!r} has no unit; give one ({{value: ..., unit: ...}}) such as {examples}")
    if unit.dimensionality != registry().get_dimensionality(dimension):
        other = {"photon_energy": ", or give a wavelength as the constant wavelength",
                 "wavelength": ", or give an energy as the constant photon_energy"}.get(key, "")
        found = next((kind for name, kind in KINDS.items()
                      if unit.dimensionality == registry().get_dimensionality(name)), f"[{unit.dimensionality}]")
        raise SpecError(f"{key!r} is in {quantity.unit!r}, a unit of {found}, not of {KINDS[dimension]}; "
                        f"write it in {examples}{other}")
    value = quantity.value
    if isinstance(value, (bool, str, list)) or not value > 0:
        raise SpecError(f"{key!r} is {value!r} {quantity.unit}; it is a number above 0")
    return registry().Quantity(float(value), unit)


def length_in_metres(key: str, value: Any, unit: str) -> float:
    """``value``, a length in ``unit`` (``""``: metres), in metres; SpecError unless it is a length above 0."""
    return float(measured(key, Quantity(value=value, unit=unit or "m"), "[length]").to("m").magnitude)


def photon_energy_ev(constants: Mapping[str, Quantity]) -> float | None:
    """The photon energy in eV that the constants (a description's ``{name: Quantity}``) ``photon_energy`` or
    ``wavelength`` give (E = hc/λ), None if neither is there; SpecError if the one there is not a photon
    energy or a wavelength (:func:`measured`)."""
    for key in MEASURES:
        if (quantity := constants.get(key)) is not None:
            return float(measured(key, quantity).to("eV", "spectroscopy").magnitude)
    return None


def description_problems(metadata: RunMetadata) -> list[str]:
    """What is wrong with the units and physical values of ``metadata``, one line each, each naming the constant
    or field (empty: nothing)."""
    problems = []
    for key, quantity in metadata.constants.items():
        try:
            measured(key, quantity)
        except SpecError as exc:
            problems.append(f"constant {exc}")
    if not problems and {"photon_energy", "wavelength"} <= metadata.constants.keys():
        energy = measured("photon_energy", metadata.constants["photon_energy"]).to("eV").magnitude
        from_wavelength = photon_energy_ev({"wavelength": metadata.constants["wavelength"]})
        if abs(energy - from_wavelength) > AGREEMENT * energy:
            problems.append(f"constants photon_energy ({energy:.6g} eV) and wavelength (a photon of "
                            f"{from_wavelength:.6g} eV) disagree; give one of them, or both for the same photons")
    for name, entry in metadata.fields.items():
        if entry.distance is not None and not entry.distance > 0:
            problems.append(f"field {name!r}: distance {entry.distance!r} m; the sample-to-detector "
                            "distance is above 0 (in metres)")
        if any(not size > 0 for size in entry.pixel_size):
            problems.append(f"field {name!r}: pixel_size {list(entry.pixel_size)!r} m; each pixel size "
                            "is above 0 (in metres)")
    return problems
