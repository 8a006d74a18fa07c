"""validator: JSON Schema validation of messages (Kong's websocket-validator).

``handler.py`` holds the plugin class, ``schema.py`` its config.
"""
