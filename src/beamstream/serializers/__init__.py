"""Serializer plugins: the spec models that build codecs (:mod:`beamstream.codecs`)."""
