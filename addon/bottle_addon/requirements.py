"""What the addon needs of the image it runs in, checked before anything else is imported.

The addon drives mitmproxy's proxy layers (`hooks`, `layers`), an internal API that changes
between releases, so it runs only on the mitmproxy release it was written and tested for. An
image that is not (another release, a missing module, an old Python) stops mitmdump at once
with one line that says what to do — never a traceback halfway through a load, and never a
mitmproxy that goes on proxying without the addon. Only the standard library is used here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable

# The mitmproxy releases the addon is tested on: major.minor, any patch.
MITMPROXY_RELEASES = ("12.2",)
PYTHON_AT_LEAST = (3, 12)
# Every third-party module the addon imports.
MODULES = ("mitmproxy", "cryptography", "certifi", "h11")
# Exit status of a mitmdump stopped for an image that does not fit (EX_CONFIG).
EXIT_STATUS = 78


def problems(
    python: tuple[int, ...] = tuple(sys.version_info[:3]),
    has_module: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None,
    mitmproxy_version: Callable[[], str] = lambda: importlib.metadata.version("mitmproxy"),
) -> list[str]:
    """What the running image lacks, in words; empty when it has everything."""
    found: list[str] = []
    if python[:2] < PYTHON_AT_LEAST:
        found.append(
            f"Python {'.'.join(map(str, python))} is older than "
            f"{'.'.join(map(str, PYTHON_AT_LEAST))}"
        )
    missing = [name for name in MODULES if not has_module(name)]
    if missing:
        found.append(f"the module(s) {', '.join(missing)} cannot be imported")
    if "mitmproxy" not in missing:
        try:
            version = mitmproxy_version()
        except Exception as e:
            found.append(f"mitmproxy's version cannot be read ({type(e).__name__})")
        else:
            if ".".join(version.split(".")[:2]) not in MITMPROXY_RELEASES:
                found.append(
                    f"mitmproxy is {version}, and the addon runs only on "
                    f"{' or '.join(r + '.x' for r in MITMPROXY_RELEASES)}"
                )
    return found


def check_or_exit() -> None:
    """Stops the whole process when the image does not fit, saying why and what to do."""
    found = problems()
    if not found:
        return
    sys.stderr.write(
        "bottle: this mitmproxy image cannot run bottle's addon: "
        + "; ".join(found)
        + ". Use --images local (mitmproxy 12.2.3 built here) or an image of mitmproxy 12.2.x "
        "with these modules (--mitm-image); the chain does not start without its addon.\n"
    )
    sys.stderr.flush()
    # mitmproxy catches exceptions from an addon script's import and goes on without it.
    os._exit(EXIT_STATUS)
