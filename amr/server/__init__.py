"""`amr serve` and its client.

amr.server.app (the web page and JSON API), amr.server.browse (what the page
filters and labels results by), amr.server.client (`amr query --server`: the
standard-library client of a running server). Nothing is imported here, so
that the client starts at once.
"""
