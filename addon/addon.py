"""bottle's mitmproxy addon, loaded with `mitmdump -s addon.py`: see README.md."""

from bottle_addon.hooks import BottleAddon

addons = [BottleAddon()]
