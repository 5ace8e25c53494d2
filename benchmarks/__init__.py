"""Benchmarks of al_lib against BaaL 2.1.0: ``python -m benchmarks.run`` (not part of the tests).

See ``benchmarks/README.md``.
"""
