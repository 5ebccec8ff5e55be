"""Settings from the environment: one reading for preprocessing, simulation and the app."""

from __future__ import annotations

import pytest

from polmap import settings


def test_threads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLMAP_THREADS", "3")
    assert settings.worker_threads() == 3
    monkeypatch.setenv("POLMAP_THREADS", "12")  # an explicit choice is not capped
    assert settings.worker_threads() == 12
    monkeypatch.delenv("POLMAP_THREADS")
    assert settings.worker_threads() == max(1, min(settings.MAX_THREADS, settings.usable_cores()))


@pytest.mark.parametrize("raw", ["two", "0", "-1", "1.5"])
def test_a_bad_value_names_the_variable_instead_of_becoming_a_default(monkeypatch: pytest.MonkeyPatch,
                                                                      raw: str) -> None:
    monkeypatch.setenv("POLMAP_THREADS", raw)
    with pytest.raises(ValueError, match=f"POLMAP_THREADS must be a positive integer, found '{raw}'"):
        settings.worker_threads()
    monkeypatch.setenv("POLMAP_MAX_UPLOAD_MB", raw)
    with pytest.raises(ValueError, match="POLMAP_MAX_UPLOAD_MB"):
        settings.max_upload_mb()


def test_simulation_and_preprocessing_use_the_same_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import polmap.simulate.render as simulate

    calls = []
    monkeypatch.setenv("POLMAP_THREADS", "1")
    simulate._run_chunks(lambda sl: calls.append(sl), 10, 2)  # one worker: in order, in this thread
    assert calls == [slice(s, s + 2) for s in range(0, 10, 2)]
    monkeypatch.setenv("POLMAP_THREADS", "x")
    with pytest.raises(ValueError, match="POLMAP_THREADS"):
        simulate._run_chunks(lambda sl: None, 10, 2)


def test_folders(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("POLMAP_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("POLMAP_WORKSPACE_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("POLMAP_DEMO_PRESET", "")
    assert settings.cache_dir() == tmp_path / "c"
    assert settings.workspace_dir() == (tmp_path / "w").resolve() and (tmp_path / "w").is_dir()
    assert settings.demo_preset() == "demo"
