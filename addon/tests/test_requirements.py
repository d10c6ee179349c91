"""The addon's requirements of its image, as plain functions."""

from __future__ import annotations

import importlib.metadata

from bottle_addon import requirements


def fits(**overrides: object) -> list[str]:
    args: dict[str, object] = {
        "python": (3, 13, 5),
        "has_module": lambda _name: True,
        "mitmproxy_version": lambda: "12.2.3",
    }
    args.update(overrides)
    return requirements.problems(**args)  # type: ignore[arg-type]


def test_the_image_this_test_runs_on_fits() -> None:
    assert requirements.problems() == []
    assert importlib.metadata.version("mitmproxy").startswith("12.2.")


def test_a_fitting_image_has_no_problem() -> None:
    assert fits() == []
    assert fits(mitmproxy_version=lambda: "12.2.0") == []


def test_another_mitmproxy_release_is_named_with_the_one_needed() -> None:
    found = fits(mitmproxy_version=lambda: "11.1.3")
    assert found == ["mitmproxy is 11.1.3, and the addon runs only on 12.2.x"]
    assert fits(mitmproxy_version=lambda: "12.10.0") != []


def test_missing_modules_and_an_old_python_are_each_named() -> None:
    found = fits(python=(3, 10, 1), has_module=lambda name: name not in ("h11", "certifi"))
    assert found == [
        "Python 3.10.1 is older than 3.12",
        "the module(s) certifi, h11 cannot be imported",
    ]


def test_an_unreadable_version_is_a_problem_not_a_pass() -> None:
    def broken() -> str:
        raise importlib.metadata.PackageNotFoundError("mitmproxy")

    assert fits(mitmproxy_version=broken) == [
        "mitmproxy's version cannot be read (PackageNotFoundError)"
    ]


def test_an_image_that_does_not_fit_stops_the_process_with_one_line() -> None:
    import pathlib
    import subprocess
    import sys

    addon_dir = pathlib.Path(__file__).resolve().parents[1]
    script = (
        "from bottle_addon import requirements\n"
        "requirements.MITMPROXY_RELEASES = ('99.0',)\n"
        "requirements.check_or_exit()\n"
        "print('went on')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=addon_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == requirements.EXIT_STATUS, done
    assert "went on" not in done.stdout
    assert done.stderr.startswith("bottle: this mitmproxy image cannot run bottle's addon: ")
    assert "runs only on 99.0.x" in done.stderr
    assert "--images local" in done.stderr
    assert done.stderr.count("\n") == 1
