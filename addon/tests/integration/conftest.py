"""Fixtures: a real mitmdump with the addon between socket clients, a stub scanner and a stub
upstream, all on 127.0.0.1 inside one container. See itsupport.py for the pieces.

Run (from the repo root; `--network none` is fine, everything is on loopback):

    docker run --rm --network none -v "$PWD/addon:/addon:ro" bottle-mitmproxy-test:<tag> \
        python -m pytest -p no:cacheprovider -q /addon/tests/integration

The credential tests put a stub upstream on 127.0.0.1:443 (a binding is for https port 443).
Docker's default `net.ipv4.ip_unprivileged_port_start=0` allows that for uid 1000; where it is
not allowed, those tests check only the scanner side and skip the rest, saying so.
`BOTTLE_IT_EXTRA_SETS="name=value,..."` adds mitmdump options to every launch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from itsupport import (
    Chain,
    ChainFactory,
    Launcher,
    Mitm,
    Pki,
    ProcessKey,
    Scanner,
    Upstream,
    make_mitm_ca,
    make_pki,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def mitm_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mitm_ca(tmp_path_factory.mktemp("mitm-ca") / "confdir")


# The stubs and mitmdump processes live for a test module; function-scoped fixtures hand them
# out reset (stub records cleared, scanner back to "allow", process output/log marked).


@pytest.fixture(scope="module")
def module_upstream(pki: Pki) -> Iterator[Upstream]:
    up = Upstream(pki)
    up.start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def module_scanner() -> Iterator[Scanner]:
    sc = Scanner()
    sc.start()
    yield sc
    sc.stop()


@pytest.fixture(scope="module")
def module_launcher(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, module_scanner: Scanner, mitm_ca: Path
) -> Iterator[Launcher]:
    la = Launcher(tmp_path_factory.mktemp("mitm"), pki, module_scanner, mitm_ca)
    yield la
    la.stop_all()


@pytest.fixture(scope="module")
def shared_processes() -> dict[ProcessKey, Mitm]:
    return {}


@pytest.fixture
def upstream(module_upstream: Upstream) -> Upstream:
    module_upstream.reset()
    return module_upstream


@pytest.fixture
def scanner(module_scanner: Scanner) -> Scanner:
    module_scanner.reset()
    return module_scanner


@pytest.fixture
def launcher(module_launcher: Launcher) -> Launcher:
    return module_launcher


@pytest.fixture
def make_chain(
    launcher: Launcher,
    upstream: Upstream,
    scanner: Scanner,
    shared_processes: dict[ProcessKey, Mitm],
) -> Iterator[ChainFactory]:
    factory = ChainFactory(launcher, upstream, scanner, shared_processes)
    yield factory
    factory.finish()
    # A hook that raises is a bug even when the test's own checks passed.
    errors = factory.addon_errors()
    if errors:
        pytest.fail("mitmdump logged addon errors:\n" + "\n".join(errors))


@pytest.fixture
def chain(make_chain: ChainFactory) -> Chain:
    return make_chain()
