"""bottle's mitmproxy addon, loaded with `mitmdump -s addon.py`: see README.md."""

from bottle_addon import requirements

# Before anything that imports mitmproxy's internals: an image that does not fit stops here.
requirements.check_or_exit()

from bottle_addon.hooks import BottleAddon  # noqa: E402

addons = [BottleAddon()]
