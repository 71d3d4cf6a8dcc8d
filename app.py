"""The zero-shot segmentation page as a Hugging Face Space (or ``python app.py`` on this machine).

A Space runs this file; its ``requirements.txt`` lists this package with the ``app`` extra. The weights
are the bundled synthetic-scenes model unless ``GROUPVIT_WEIGHTS`` names others (e.g. ``gcc-yfcc``).
"""

import os

from groupvit.app import App

if __name__ == "__main__":
    App(os.environ.get("GROUPVIT_WEIGHTS", "synthetic-small")).launch(host=os.environ.get("GRADIO_SERVER_NAME",
                                                                                         "127.0.0.1"))
