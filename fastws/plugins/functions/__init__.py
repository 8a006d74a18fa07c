"""pre-function / post-function: Python snippets from the config, run per phase.

After Kong's pre-function and post-function plugins, which share one handler
(``kong/plugins/pre-function/_handler.lua``) and one schema. ``handler.py``
holds both plugin classes, ``schema.py`` their config.
"""
