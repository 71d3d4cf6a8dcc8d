"""The zero-shot segmentation page as a Hugging Face Space (or ``python app.py`` on this machine).

A Space runs this file; its ``requirements.txt`` lists this package with the ``app`` extra. The page offers
the bundled synthetic-scenes model and the weights that ``GROUPVIT_WEIGHTS`` names (comma-separated, e.g.
``gcc-yfcc``), nothing else: visitors cannot make the server read other files or download other weights.
"""

import os

from groupvit.app import App

if __name__ == "__main__":
    weights = [name.strip() for name in os.environ.get("GROUPVIT_WEIGHTS", "synthetic-small").split(",")]
    App([name for name in weights if name]).launch(host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
