"""The token sidecar: keeps short-lived OIDC tokens for AWS and GCP on disk.

It obtains a token per provider (signing it with a mounted key in `key` mode,
or asking the issuer service in `issuer` mode), writes it atomically into the
shared memory volume, rewrites it before it expires, and serves `/readyz`,
`/healthz` and `/metrics`. Run it with `python -m sidecar --help`.

Only `sidecar.signer` touches cryptography and PyJWT, and only when it signs,
so a sidecar in `issuer` mode never loads them.
"""
