"""Server messages kept in KubeApiError: capped at a word's end, cut marked."""

from __future__ import annotations

from activities.kubeapi import MESSAGE_CAP, api_error, capped


def test_short_message_kept() -> None:
    assert capped("spec.replicas: Invalid value: -1") == (
        "spec.replicas: Invalid value: -1"
    )


def test_long_message_cut_at_word() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    cut = capped(words)
    assert len(cut) <= MESSAGE_CAP + len(" [cut]")
    assert cut.endswith(" [cut]")
    remaining = cut.removesuffix(" [cut]").split(" ")
    assert remaining == words.split(" ")[: len(remaining)]


def test_api_error_caps_message() -> None:
    error = api_error(422, "x " * 400, "PATCH /apis/apps/v1/x")
    assert error.message.endswith(" [cut]")
    assert len(error.message) <= MESSAGE_CAP + len(" [cut]")
