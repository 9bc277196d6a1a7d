"""The tests' own port picker (tests/workspace.py free_port), which servers the tests start are given."""

from __future__ import annotations

import socket

import pytest
import workspace


def test_a_port_range_never_gives_one_port_twice_and_says_when_it_is_used_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two servers are often given their ports before either binds one: each must get its own.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        first = sock.getsockname()[1]
    monkeypatch.setattr(workspace, "_GIVEN_PORTS", set(), raising=False)
    monkeypatch.setenv("DEEPGUARD_TEST_PORTS", f"{first}-{first + 1}")
    given = []
    with pytest.raises(RuntimeError, match=f"no free port left in DEEPGUARD_TEST_PORTS={first}-{first + 1}"):
        for _ in range(3):
            given.append(workspace.free_port())
    assert len(given) == len(set(given)) and set(given) <= {first, first + 1}


def test_without_a_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGUARD_TEST_PORTS", raising=False)
    assert workspace.free_port() > 0
