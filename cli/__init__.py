"""The ``tailor`` command line (installed as ``tailorrt.cli``)."""
