"""Where the WebUI keeps its data: ``data_path`` and ``models_path = <data>/models``."""

import os

data_path = os.environ["DREAMCORE_STANDIN_DATA_DIR"]
models_path = os.path.join(data_path, "models")
script_path = data_path
