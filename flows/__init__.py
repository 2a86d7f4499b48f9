"""Thin Prefect orchestration around the bzpipe library.

Each task is a short call into ``bzpipe``; tasks pass store URIs, never large
Datasets.  Retries, caching, concurrency, schedules, events and artifacts live
here and only here.
"""
