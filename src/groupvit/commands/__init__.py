"""Sub-commands of the ``groupvit`` command line (see :mod:`groupvit.cli`)."""
