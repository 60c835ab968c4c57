"""Admission webhook, OIDC issuer and admin CLI of workload-identity."""
