"""netdiag's BPF C sources (``*.c`` programs, ``*.h`` shared headers), installed as package data.

This folder is the package ``netdiag.bpf`` in every installed form (editable, wheel, sdist, the
container image). It is a regular package, so its location is a real directory on disk;
``netdiag.kernel.bpfsrc`` finds it from the import system, never from the current directory.
"""
