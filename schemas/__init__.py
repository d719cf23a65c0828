"""The released Avro schemas as package data (``<Record>/v<N>.avsc``); no code.

A package so that a wheel ships the files and :func:`importlib.resources.files` finds them
in any install; :mod:`pipeline.schemas` reads them.
"""
