# Enables the fixtures of LunaSentri's test kit (hook_recorder, register_plugin, ...).
pytest_plugins = ["lunasentri_core.testing"]
