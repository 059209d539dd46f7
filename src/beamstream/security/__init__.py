"""Who may use beamstream: certificates for mutual TLS, and each stream's keys (docs/security.md).

Modules:

- :mod:`beamstream.security.ca`: a small certificate authority (a CA key and certificate, user and service
  certificates, a signed revocation list) in a directory only its owner can reach.
- :mod:`beamstream.security.streamkey`: a stream's credentials (a secret, and the payload and admission keys
  derived from it) and their files.
- :mod:`beamstream.security.cli`: the ``beamstream ca`` commands over it (``init``, ``issue``, ``revoke``,
  ``crl``, ``list``).

Importing this package imports none of them (the CLI's start-up stays fast; :mod:`~beamstream.security.ca`
needs ``cryptography``).
"""
