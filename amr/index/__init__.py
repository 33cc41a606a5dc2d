"""The index: one vector per indexed segment, searched by inner product.

Its modules, bottom up (each imports only those above it)::

    kinds.py   the approximate index kinds (light: the CLI imports it at start-up)
    format.py  the files on disk: manifest attributes, header, file names, versions
    store.py   the append-only columns: reading, the writer, the id lookup, compaction
    ann.py     FAISS: the approximate index built, written and read
    reader.py  Index: read access to one version of an index
    search.py  the search `amr query` and `amr serve` call, and its primitives
    tune.py    an approximate index's settings, chosen by measured recall
    build.py   `amr index`: build, append, add an approximate index, refresh the query encoder

This file imports nothing, so that ``amr.index.kinds`` stays light.
"""
