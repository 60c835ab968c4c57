"""The example application: it knows nothing about workload identity.

boto3 and google-auth find their credentials on their own, from the variables
and files the webhook and its sidecar put into the pod.
"""

import os
import sys
import time

import boto3
import google.auth
from google.auth.transport.requests import Request

BUCKET = os.environ.get("REPORTS_BUCKET", "demo-reports")


def aws() -> None:
    caller = boto3.client("sts").get_caller_identity()
    print(f"aws: signed in as {caller['Arn']}")
    s3 = boto3.client("s3")
    key = f"reports/{int(time.time())}.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"quarterly numbers")
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == b"quarterly numbers", "S3 returned something else"
    print(f"aws: wrote and read back s3://{BUCKET}/{key}")


def gcp() -> None:
    credentials, project = google.auth.default(
        scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    credentials.refresh(Request())
    who = (
        getattr(credentials, "service_account_email", None) or "the federated principal"
    )
    print(
        f"gcp: {type(credentials).__module__} credentials for {who}, project {project}"
    )
    print(f"gcp: access token obtained, valid until {credentials.expiry:%H:%M:%S} UTC")


if __name__ == "__main__":
    aws()
    gcp()
    sys.exit(0)
