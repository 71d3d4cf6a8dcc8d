"""``groupvit`` with one extra named release served from ``$GROUPVIT_TEST_RELEASE_URL`` (tests under torchrun).

``GROUPVIT_TEST_RELEASE_NAME`` is its name, ``GROUPVIT_TEST_RELEASE_FILE`` its file name (with the SHA-256 prefix).
"""

import os
import sys

from groupvit import pretrained
from groupvit.cli import main

if __name__ == "__main__":
    name, filename = os.environ["GROUPVIT_TEST_RELEASE_NAME"], os.environ["GROUPVIT_TEST_RELEASE_FILE"]
    url = f"{os.environ['GROUPVIT_TEST_RELEASE_URL']}/{filename}"
    pretrained.WEIGHTS[name] = pretrained.NamedWeights(name, filename, url, "a test release")
    sys.exit(main(sys.argv[1:]))
