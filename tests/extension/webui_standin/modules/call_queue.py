"""The lock the WebUI holds while it runs a generation or changes the model list."""

import threading

queue_lock = threading.Lock()
