"""``instaseg app`` off loopback refuses to serve until someone can log in, and says how to add them."""

from __future__ import annotations

import io
import sys

import pytest
import uvicorn


@pytest.fixture
def served(monkeypatch) -> list[dict]:
    """The calls ``instaseg app`` makes to ``uvicorn.run``, recorded instead of serving."""
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append({"app": app, **options}))
    return calls


def _add(cli, monkeypatch, project, url, name, role):
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough\n"))
    result = cli("users", "add", project, name, "--role", role, "--db", url, "--password-stdin")
    assert result.code == 0, result.stderr


def test_serving_off_loopback_without_users_is_refused_before_the_server_starts(cli, project_settings, served):
    project, url = project_settings.project_dir, project_settings.database_url
    result = cli("app", project, "--host", "0.0.0.0", "--workers", "0", "--db", url)
    assert result.code == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert f"instaseg users add {project} NAME --role admin" in result.stderr
    assert served == []


def test_serving_off_loopback_starts_once_a_user_can_log_in(cli, project_settings, served, monkeypatch):
    project, url = project_settings.project_dir, project_settings.database_url
    _add(cli, monkeypatch, project, url, "alice", "admin")
    result = cli("app", project, "--host", "0.0.0.0", "--port", "8123", "--workers", "0", "--db", url)
    assert result.code == 0, result.stderr
    assert [(call["host"], call["port"]) for call in served] == [("0.0.0.0", 8123)]
    assert served[0]["app"].state.settings.local is False


def test_a_deactivated_user_does_not_count_as_one_who_can_log_in(cli, project_settings, served, monkeypatch):
    project, url = project_settings.project_dir, project_settings.database_url
    _add(cli, monkeypatch, project, url, "ann", "annotator")
    assert cli("users", "remove", project, "ann", "--db", url).code == 0
    result = cli("app", project, "--host", "0.0.0.0", "--workers", "0", "--db", url)
    assert result.code == 2 and "instaseg users add" in result.stderr
    assert served == []


def test_serving_on_loopback_needs_no_users(cli, project_settings, served):
    project, url = project_settings.project_dir, project_settings.database_url
    result = cli("app", project, "--workers", "0", "--db", url)
    assert result.code == 0, result.stderr
    assert served[0]["host"] == "127.0.0.1" and served[0]["app"].state.settings.local is True
