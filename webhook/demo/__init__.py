"""Loopback stand-ins for the cloud side, and the end-to-end demo.

AWS is moto's server (the real API emulator) behind a strict token check,
because moto accepts any web identity token; GCP's STS and IAM Credentials
endpoints are small local fakes that check tokens the way Google documents.
"""
