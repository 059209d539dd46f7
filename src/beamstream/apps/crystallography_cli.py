"""``beamstream crystallography ENDPOINT --group G --out DIR``: write a stream's hits as CXI files CrystFEL reads.

Run several with the same ``--group`` and ``--out`` to share the stream: each writes its own hit files, and
``DIR/files.lst`` lists every complete one once (:mod:`beamstream.apps.crystallography`). Peaks come from the
stream when a ``peakfinder8`` step found them there, else each member finds them itself with the options given.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from beamstream.display import console, fail
from beamstream.reading_cli import GroupEndpoint


def crystallography(
    endpoint: GroupEndpoint,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory of the hit files, files.lst and detector.geom "
                                                          "(shared by the members)")],
    group: Annotated[Optional[str], typer.Option(help="read as a member of this consumer group (the members "
                                                      "share the stream and DIR)")] = None,
    member: Annotated[Optional[str], typer.Option(help="this member's name in its file names (default: "
                                                       "HOST-PID); unique within the group")] = None,
    field: Annotated[str, typer.Option(help="the image field")] = "image",
    peaks: Annotated[Optional[str], typer.Option(
        metavar="PREFIX", help="take the peaks from the stream's fields PREFIX_npeaks, PREFIX_peak_x... (a "
                               "peakfinder8 step's output; default: FIELD), finding them here when absent")] = None,
    min_peaks: Annotated[int, typer.Option(min=0, help="an event with at least this many peaks is a hit")] = 10,
    hits_per_file: Annotated[int, typer.Option(min=1, help="hits per CXI file")] = 1000,
    adc_threshold: Annotated[float, typer.Option(help="peakfinder8: a peak's pixels are above this")] = 100.0,
    min_snr: Annotated[float, typer.Option(help="peakfinder8: and this many sigmas above the background")] = 6.0,
    min_pixels: Annotated[int, typer.Option(min=1, help="peakfinder8: fewest pixels of a peak")] = 2,
    max_pixels: Annotated[int, typer.Option(min=1, help="peakfinder8: most pixels of a peak")] = 200,
    local_bg_radius: Annotated[int, typer.Option(min=1, help="peakfinder8: local background ring, pixels")] = 3,
    max_peaks: Annotated[int, typer.Option(min=1, help="peakfinder8: peaks kept per event")] = 2048,
    centre: Annotated[Optional[tuple[float, float]], typer.Option(
        metavar="ROW COL", help="the beam centre in pixels of the (stacked) frame (default: its middle)")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        metavar="SECONDS", help="seconds of silence before giving up")] = 30.0,
) -> None:
    """Find the hits of a stream and write them, with their peaks, as CXI files for CrystFEL's indexamajig
    (``indexamajig -i DIR/files.lst -g DIR/detector.geom ...``); exit 1 if the stream is incomplete, 130 on Ctrl-C
    (the files written so far are complete and listed)."""
    from beamstream.apps.crystallography import HitFiles, geometry_text, select_hits, write_geometry
    from beamstream.client import Client
    from beamstream.errors import BeamstreamError, StreamIncomplete
    from beamstream.steps.peakfinder import Peakfinder8Step
    from beamstream.wire.metadata import FieldMetadata, RunMetadata

    prefix = peaks or field
    try:
        step = Peakfinder8Step(field=field, output=prefix, adc_threshold=adc_threshold, min_snr=min_snr,
                               min_pixels=min_pixels, max_pixels=max_pixels, local_bg_radius=local_bg_radius,
                               max_peaks=max_peaks, centre=centre)
    except ValueError as exc:
        fail(str(exc), code=2)
    needed = step.output_fields()
    files = HitFiles(out, member or f"{socket.gethostname()}-{os.getpid()}", hits_per_file)
    finder = None
    events = 0
    complete, stopped, error = True, False, None
    try:
        with Client(endpoint, timeout=timeout, **({"group": group} if group else {})) as client:
            try:
                for message in client.messages():
                    if field not in message.arrays:
                        fail(f"the stream has no field {field!r} (it has {', '.join(message.arrays)}): give --field")
                    images = message.arrays[field]
                    if all(name in message.arrays for name in needed):
                        tables = message.arrays
                    else:
                        finder = finder or step.finder()
                        tables = finder.find(images)
                    metadata = client.metadata or RunMetadata()
                    if events == 0:
                        write_geometry(out, geometry_text(images.shape[1:], metadata.fields.get(field, FieldMetadata()),
                                                          metadata, centre))
                    events += len(images)
                    hits = select_hits(message.seq, message.time, images, tables, prefix, min_peaks)
                    files.add(hits, client.report.stream or "stream", metadata, field)
            except StreamIncomplete as exc:
                complete = False
                console.print(str(exc))
    except KeyboardInterrupt:
        stopped = True
    except BeamstreamError as exc:
        error = str(exc)
    finally:
        files.close()  # the open file, complete with the hits written so far, is listed
    if error is not None:
        fail(error)
    console.print(f"{'stopped: ' if stopped else ''}{files.hits} hits of {events} events in {len(files.written)} "
                  f"files, listed in {out / 'files.lst'}")
    if stopped:
        raise typer.Exit(130)
    if not complete:
        raise typer.Exit(1)
