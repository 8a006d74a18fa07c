"""size-limit: per-side message size limits (Kong's websocket-size-limit).

``handler.py`` holds the plugin class, ``schema.py`` its config.
"""
