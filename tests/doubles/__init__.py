"""Local test doubles of the remote services bzpipe talks to (ARM Live, the CDS, S3).

Each is a real HTTP server on 127.0.0.1 in a background thread, speaking the
protocol the real client library uses, with fault injection for the failure
cases the ingest must survive.
"""
