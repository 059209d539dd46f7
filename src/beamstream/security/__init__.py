"""Who may use beamstream: certificates for mutual TLS (docs/security.md).

Modules:

- :mod:`beamstream.security.ca`: a small certificate authority (a CA key and certificate, user and service
  certificates, a signed revocation list) in a directory only its owner can reach.
- :mod:`beamstream.security.cli`: the ``beamstream ca`` commands over it (``init``, ``issue``, ``revoke``,
  ``crl``, ``list``).

Importing this package imports neither module (the CLI's start-up stays fast; :mod:`~beamstream.security.ca`
needs ``cryptography``, from the ``service`` extra).
"""
