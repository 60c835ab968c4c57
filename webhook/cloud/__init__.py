"""The cloud side: OIDC providers, roles and permissions in AWS and GCP.

- `spec`: what install applies for an identity (permissions, snapshot, hash);
- `aws_plan`, `gcp_plan`: pure functions from observed state to the calls
  install makes and the findings verify reports;
- `aws`, `gcp`: the only modules that talk to the clouds;
- `plan`: calls, findings and how they are printed;
- `errors`: cloud errors turned into what to do;
- `state`, `report`: what was installed, and installed/pending/failed;
- `install`: observe, plan, apply and record, per identity.
"""
