"""What the webhook and the sidecar must agree on: token claims, keys, JWKS,
file names and the GCP credential configuration.

Only `keys` and `signing` import cryptography; the rest is standard library, so
a sidecar in `issuer` mode never loads a crypto library.
"""
