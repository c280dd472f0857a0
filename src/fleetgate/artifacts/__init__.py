"""Artifacts: signing keys, signed reproducible bundles, safe extraction, distribution.

Modules (import them directly; this package imports nothing so the agent loads only what it uses):
``keys`` (Ed25519 key files), ``payload`` (deterministic tar.gz of a source tree), ``container``
(the ``.fgb`` file layout), ``signing`` (sign/verify the canonical manifest, verify a bundle),
``bundle`` (build a bundle), ``extract`` (hostile-archive-safe extraction), ``fetch`` (resumable,
size-capped, digest-checked download — agent side), ``distribution`` (content-addressed blob
server with Range support — controller side, the only module here the agent never imports).
The format and the trust model are written down in ``docs/artifacts.md``.
"""
