"""The azimuthal step against pyFAI itself, with geometry from options, a PONI file or the stream's description."""

from __future__ import annotations

import numpy as np
import pytest

from beamstream.batch import Batch
from beamstream.errors import StepError
from beamstream.sources.simulated import ImageDetector
from beamstream.spec_paths import paths_opened
from beamstream.steps.azimuthal import AzimuthalStep
from beamstream.wire.metadata import Quantity, RunMetadata

pyFAI = pytest.importorskip("pyFAI")
from pyFAI.integrator.azimuthal import AzimuthalIntegrator  # noqa: E402

SHAPE = (256, 320)
PIXEL, DISTANCE, ENERGY = 75e-6, 0.08, 9500.0
WAVELENGTH = 6.62607015e-34 * 299792458 / (ENERGY * 1.602176634e-19)
CENTRE = (120.25, 170.5)


def frames(events: int = 4) -> np.ndarray:
    detector = ImageDetector(shape=list(SHAPE), dtype="float32", peaks=30)
    return np.stack([detector.draw(np.random.default_rng([1, index]))["image"] for index in range(events)])


def integrate(step: AzimuthalStep, images: np.ndarray) -> dict[str, np.ndarray]:
    """The step's fields for ``images``, given read-only as sources give them."""
    images = images.copy()
    images.setflags(write=False)
    return step.build().apply(Batch(np.arange(len(images)), np.zeros(len(images)), {"image": images})).data


def reference() -> AzimuthalIntegrator:
    """pyFAI's integrator for the test geometry, made here, not by the step (pixel i's centre at (i + 0.5) pixels)."""
    return AzimuthalIntegrator(dist=DISTANCE, poni1=(CENTRE[0] + 0.5) * PIXEL, poni2=(CENTRE[1] + 0.5) * PIXEL,
                               pixel1=PIXEL, pixel2=PIXEL, wavelength=WAVELENGTH)


@pytest.mark.parametrize("method, pyfai_method, unit", [
    ("csr", ("bbox", "csr", "cython"), "q_nm^-1"),
    ("histogram", ("no", "histogram", "cython"), "2th_deg"),
    ("lut", ("bbox", "lut", "cython"), "q_A^-1"),
])
def test_profiles_equal_pyfais_own(method, pyfai_method, unit):
    images = frames()
    step = AzimuthalStep(field="image", npt=300, unit=unit, method=method, distance=DISTANCE,
                         pixel_size=(PIXEL, PIXEL), centre=CENTRE, energy=ENERGY, polarization=0.95)
    data = integrate(step, images)
    ai = reference()
    for index, frame in enumerate(images):
        expected = ai.integrate1d(frame, 300, unit=unit, method=pyfai_method, polarization_factor=0.95)
        np.testing.assert_allclose(data["image_azimuthal"][index], expected.intensity, rtol=1e-6)
        np.testing.assert_allclose(data["image_azimuthal_radial"][index], expected.radial, rtol=1e-6)
    assert data["image_azimuthal"].shape == (4, 300) and np.ptp(data["image_azimuthal"][0]) > 0


def test_poni_file_and_mask_are_pyfais_and_paths_the_spec_opens(tmp_path):
    images = frames(2)
    poni = tmp_path / "detector.poni"
    reference().save(str(poni))
    good = np.ones(SHAPE, dtype=np.uint8)
    good[:, :40] = 0
    np.save(tmp_path / "mask.npy", good)
    step = AzimuthalStep(field="image", npt=200, poni=poni, mask={"file": tmp_path / "mask.npy"},
                         mask_convention="zero-is-bad")
    data = integrate(step, images)
    ai = pyFAI.load(str(poni))
    for index, frame in enumerate(images):
        expected = ai.integrate1d(frame, 200, unit="q_nm^-1", method=("bbox", "csr", "cython"), mask=good == 0)
        np.testing.assert_allclose(data["image_azimuthal"][index], expected.intensity, rtol=1e-6)
    unmasked = integrate(AzimuthalStep(field="image", npt=200, poni=poni), images)["image_azimuthal"]
    assert not np.allclose(unmasked, data["image_azimuthal"]), "the mask changes the profile"
    opened = {(entry.where, entry.mode) for entry in paths_opened(step)}
    assert opened == {("poni", "read"), ("mask.file", "read")}


def test_geometry_comes_from_the_streams_description():
    """Distance and pixel size of the field, photon energy from the constants, as the producer completes steps."""
    from beamstream.description import describe_stream
    from beamstream.spec import parse_spec

    images = frames(2)
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": 2, "detectors": [{"kind": "image", "shape": list(SHAPE)}]},
        "sinks": [{"type": "stream", "endpoint": "ipc:///nonexistent"}],
        "metadata": {"fields": {"image": {"distance": DISTANCE, "pixel_size": [PIXEL, PIXEL]}},
                     "constants": {"photon_energy": {"value": ENERGY / 1000, "unit": "keV"}}},
    })
    spec = spec.model_copy(update={"steps": [AzimuthalStep(field="image", npt=250, centre=CENTRE)]})
    first = Batch(np.arange(2), np.zeros(2), {"image": images})
    completed, metadata = describe_stream(spec, spec.source.open(), first)
    step = completed.steps[0]
    assert (step.distance, step.pixel_size) == (DISTANCE, (PIXEL, PIXEL)) and step.energy == pytest.approx(ENERGY)
    assert metadata.fields["image_azimuthal_radial"].units == "q_nm^-1"
    data = integrate(step, images)
    expected = reference().integrate1d(images[1], 250, unit="q_nm^-1", method=("bbox", "csr", "cython"))
    np.testing.assert_allclose(data["image_azimuthal"][1], expected.intensity, rtol=1e-6)
    wavelength = RunMetadata(constants={"wavelength": Quantity(WAVELENGTH * 1e10, "A")})
    assert AzimuthalStep(field="image").complete(wavelength).energy == pytest.approx(ENERGY)


def test_missing_geometry_and_wrong_frames_are_refused():
    with pytest.raises(StepError, match=r"lacks distance \(m\), energy \(eV\), needed for q; give them in the step"):
        integrate(AzimuthalStep(field="image", pixel_size=(PIXEL, PIXEL)), frames(1))
    step = AzimuthalStep(field="image", distance=DISTANCE, pixel_size=(PIXEL, PIXEL), unit="2th_deg").build()
    with pytest.raises(StepError, match=r"event shape \(2, 4, 4\); it integrates one \(y, x\) image per event"):
        step.apply(Batch(np.arange(1), np.zeros(1), {"image": np.zeros((1, 2, 4, 4), np.float32)}))
    with pytest.raises(ValueError, match="poni gives the whole geometry: remove distance"):
        AzimuthalStep(field="image", poni="x.poni", distance=0.1)
