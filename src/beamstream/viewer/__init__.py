"""A live web viewer of a stream (``beamstream view``, ``beamstream demo --view``, the request service's ``/ui``).

- :mod:`~beamstream.viewer.latest`: the newest event and the stream's figures, offered by whoever reads the
  stream (a lossy consumer group by default), taken by the pages when they ask;
- :mod:`~beamstream.viewer.frames`: what a page draws, made from one event (images as 8-bit pictures, panels
  laid out, waveforms reduced), packed in one binary message;
- :mod:`~beamstream.viewer.app`: the page, its script and style (``static/``, served from the package: no
  internet) and the requests by which a page asks for the next frame as it starts drawing the last one;
- :mod:`~beamstream.viewer.serve`: uvicorn serving it, in the foreground or beside other work;
- :mod:`~beamstream.viewer.watch`: one reader per stream shared by the pages of a server that shows many (the
  request service's ``/ui``);
- :mod:`~beamstream.viewer.cli`: ``beamstream view``.

Needs the ``service`` extra (starlette, uvicorn).
"""
