"""``python -m tailorrt.cli``: the ``tailor`` command (what torchrun starts in each process of ``tailor train
--nproc``)."""

from tailorrt.cli.app import main

main()
