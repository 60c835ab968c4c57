"""The token sidecar: keeps short-lived OIDC tokens for AWS and GCP on disk.

It obtains a token per provider (signing it with a mounted key in `key` mode,
or asking the issuer service in `issuer` mode), writes it atomically into the
shared memory volume, rewrites it before it expires, and serves `/readyz`,
`/healthz` and `/metrics`. Run it with `python -m sidecar --help`.

It runs in every pod, so it stays small: the standard library serves the
probes and talks to the issuer, only `sidecar.signer` touches cryptography
(in `key` mode, when it signs), and a sidecar in `key` mode, which makes no
TLS connection, does not even load the ssl module (`sidecar.cli`).
"""
