"""`amr serve` and its client.

amr.serve.app (the web page and JSON API), amr.serve.browse (what the page
filters and labels results by), amr.serve.client (`amr query --server`: the
standard-library client of a running server). Nothing is imported here, so
that the client starts at once.
"""
