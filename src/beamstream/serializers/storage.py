"""How a spec says fields are stored in the HDF5 files beamstream writes: compression and dataset paths.

Both the ``hdf5`` serializer and the ``files`` sink take these keys (:class:`HDF5Storage`)::

    compression: zfp            # none, gzip, zstd, bitshuffle_lz4, bitshuffle_zstd or zfp
    zfp: {rate: 8}              # zfp only: rate (bits per value), precision (bit planes) or accuracy
                                # (largest absolute error); none of them: reversible (lossless)
    level: 5                    # gzip 0-9 (default 4), zstd and bitshuffle_zstd 1-22 (default 3)
    shuffle: true               # byte shuffle before gzip or zstd
    paths: {image: /data/data}  # a field's dataset in the file (default: its name at the root)

The filters come from hdf5plugin (bitshuffle, zstd, zfp) and HDF5 itself (gzip, shuffle). A file that uses
hdf5plugin's filters opens in other HDF5 programs (HDF5 1.10's ``h5dump`` included) with
``HDF5_PLUGIN_PATH`` set to ``python -c 'import hdf5plugin; print(hdf5plugin.PLUGIN_PATH)'``. zfp stores
float32, float64, int32 and int64 arrays only; another field is refused when the message is written, naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from beamstream.codecs.hdf5 import META_GROUP, Storage
from beamstream.stages import SpecModel

Compression = Literal["none", "gzip", "zstd", "bitshuffle_lz4", "bitshuffle_zstd", "zfp"]
LEVELS = {"gzip": (0, 9, 4), "zstd": (1, 22, 3), "bitshuffle_zstd": (1, 22, 3)}  # lowest, highest, default
DatasetPath = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^/?[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Zfp(SpecModel):
    """zfp's mode: at most one of ``rate`` (bits per value: fixed size, lossy), ``precision`` (bit planes kept) or
    ``accuracy`` (the largest absolute error); none: reversible, every value kept exactly."""

    rate: float | None = Field(None, gt=0, le=64)
    precision: int | None = Field(None, ge=1, le=64)
    accuracy: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_mode(self) -> Zfp:
        given = [name for name in ("rate", "precision", "accuracy") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of rate, precision or accuracy (zfp has one mode), not {' and '.join(given)}")
        return self

    def filters(self) -> dict[str, Any]:
        import hdf5plugin

        if self.rate is None and self.precision is None and self.accuracy is None:
            return dict(hdf5plugin.Zfp(reversible=True))
        return dict(hdf5plugin.Zfp(rate=self.rate, precision=self.precision, accuracy=self.accuracy))


class HDF5Storage(SpecModel):
    """Compression and dataset paths of the fields in an HDF5 file (see the module's description).

    Attributes:
        compression: none, gzip, zstd, bitshuffle_lz4, bitshuffle_zstd or zfp.
        level: compression level for gzip (0-9, default 4), zstd and bitshuffle_zstd (1-22, default 3).
        shuffle: byte shuffle before gzip or zstd (what HDF5's shuffle filter does).
        zfp: zfp's mode (``compression: zfp`` only; default reversible).
        paths: a field's dataset path in the file, e.g. ``{image: /data/data}`` (others: their name at the root).
    """

    compression: Compression = "none"
    level: int | None = Field(None, ge=0, le=22)
    shuffle: bool = False
    zfp: Zfp | None = None
    paths: dict[FieldName, DatasetPath] = Field(default_factory=dict, max_length=1024)

    @model_validator(mode="after")
    def _consistent(self) -> HDF5Storage:
        if self.level is not None:
            if self.compression not in LEVELS:
                raise ValueError(f"level is for {', '.join(LEVELS)}; compression {self.compression} takes none")
            lowest, highest, _ = LEVELS[self.compression]
            if not lowest <= self.level <= highest:
                raise ValueError(f"{self.compression} levels go from {lowest} to {highest}, not {self.level}")
        if self.shuffle and self.compression not in ("gzip", "zstd"):
            raise ValueError("shuffle is for gzip or zstd (bitshuffle_* shuffle bits themselves; zfp needs none)")
        if self.zfp is not None and self.compression != "zfp":
            raise ValueError("zfp: is zfp's mode: give it with compression: zfp")
        paths = [path.strip("/") for path in self.paths.values()]
        for path in paths:
            if any(set(part) == {"."} for part in path.split("/")):
                raise ValueError(f"paths: /{path}: . and .. are no group names in HDF5; name the groups")
            if path == META_GROUP or path.startswith(META_GROUP + "/"):
                raise ValueError(f"paths: /{META_GROUP} is beamstream's own group (seq, time); choose another path")
            if any(other != path and other.startswith(path + "/") for other in paths):
                raise ValueError(f"paths: /{path} is a dataset and cannot also be a group above another field's")
        if len(set(paths)) != len(paths):
            raise ValueError("paths: two fields cannot have the same dataset")
        return self

    def storage(self) -> Storage:
        """The codec's :class:`~beamstream.codecs.hdf5.Storage` (h5py keywords, paths) of these settings."""
        return Storage(self._filters(), {name: "/" + path.strip("/") for name, path in self.paths.items()},
                       zfp=self.compression == "zfp")

    def _filters(self) -> dict[str, Any]:
        import hdf5plugin

        level = self.level if self.level is not None else LEVELS.get(self.compression, (0, 0, None))[2]
        shuffle = {"shuffle": True} if self.shuffle else {}
        if self.compression == "gzip":
            return {"compression": "gzip", "compression_opts": level, **shuffle}
        if self.compression == "zstd":
            return {**hdf5plugin.Zstd(clevel=level), **shuffle}
        if self.compression == "bitshuffle_lz4":
            return dict(hdf5plugin.Bitshuffle(cname="lz4"))
        if self.compression == "bitshuffle_zstd":
            return dict(hdf5plugin.Bitshuffle(cname="zstd", clevel=level))
        if self.compression == "zfp":
            return (self.zfp or Zfp()).filters()
        return {}

