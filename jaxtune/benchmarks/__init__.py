"""Benchmarks of jaxtune's parts, each a module with a ``main(argv)`` (see ``jaxtune bench``)."""
