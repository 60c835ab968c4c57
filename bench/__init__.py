"""`python -m bench`: throughput, latency, memory and CPU of the webhook, the
sidecar and the issuer on one machine, printed as one table.

Every figure is a median of runs made in the same invocation, and every
comparison (pod sizes, identity counts, memory over time) is a ratio of
figures from that same invocation, because the machines it runs on are shared
and noisy. Nothing here fails on a slow figure: a missed target is a row
marked `miss`, never an exception.
"""
