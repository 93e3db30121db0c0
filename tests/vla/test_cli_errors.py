"""`vla` failures: one clear line on the terminal, the full traceback in a log file the line names
(the run's directory when it exists, else the cache), and on the terminal too with --debug or VLA_DEBUG=1."""

from __future__ import annotations

import tempfile

import pytest
import torch

from vla.cli.main import main

TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture
def no_debug(monkeypatch, tmp_path):
    """A clean slate: no debug switch (restored afterwards even if --debug sets it), a cache of our own."""
    monkeypatch.setenv("VLA_DEBUG", "0")
    monkeypatch.setenv("VLA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fails(argv: list[str], capsys) -> str:
    """Run `vla ARGV` in this process; it must exit 2; return what it printed on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_bench_peer_without_a_gpu_is_one_line_and_its_traceback_is_kept(no_debug, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU machine, also on a GPU runner
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # --same-weights makes a folder for the peer's weights
    err = _fails(["bench", "infer", "--peer", "lerobot-pi0", "--same-weights"], capsys)
    assert "vla bench: RuntimeError: --peer lerobot-pi0: the peer benchmark runs on a CUDA GPU only" in err
    assert TRACEBACK not in err
    log = no_debug / "logs" / "bench-error.log"
    assert f"full traceback: {log}" in err
    text = log.read_text()
    assert text.startswith("=== vla bench failed at") and TRACEBACK in text and "run_peer" in text


def test_a_run_with_an_output_dir_keeps_the_traceback_there(no_debug, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    args = ["train", f"--dataset.root={tmp_path / 'nope'}", f"--output_dir={out}"]
    err = _fails(args, capsys)
    assert "does not exist" in err and TRACEBACK not in err
    assert f"full traceback: {out / 'error.log'}" in err
    assert TRACEBACK in (out / "error.log").read_text()
    assert not (no_debug / "logs").exists()


def test_debug_prints_the_traceback_on_the_terminal(no_debug, tmp_path, monkeypatch, capsys):
    args = ["train", f"--dataset.root={tmp_path / 'nope'}", f"--output_dir={tmp_path / 'never-made'}"]
    err = _fails([*args[:1], "--debug", *args[1:]], capsys)
    assert TRACEBACK in err and err.index(TRACEBACK) < err.index("vla train: FileNotFoundError")
    assert not (tmp_path / "never-made").exists()  # the traceback goes to the cache, no run dir is made for it
    assert TRACEBACK in (no_debug / "logs" / "train-error.log").read_text()
    monkeypatch.setenv("VLA_DEBUG", "1")
    assert TRACEBACK in _fails(args, capsys)


def test_data_commands_keep_their_traceback_too(no_debug, tmp_path, capsys):
    from vla.cli.data import main as data_main

    assert data_main(["stats", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    log = no_debug / "logs" / "data-stats-error.log"
    assert "vla data stats: error:" in err and TRACEBACK not in err and f"full traceback: {log}" in err
    assert TRACEBACK in log.read_text()


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["eval", "--checkpoint", "{tmp}/empty", "--suite", "mw-easy"],
            "{tmp}/empty is not a policy checkpoint: missing",
        ),
        (["serve", "--checkpoint", "{tmp}/nowhere"], "checkpoint {tmp}/nowhere is not a directory"),
        (["train", "--config", "{tmp}/recipe.yaml"], "config file not found: {tmp}/recipe.yaml"),
    ],
    ids=["checkpoint", "serve-checkpoint", "config"],
)
def test_a_missing_file_error_says_what_is_missing(no_debug, tmp_path, capsys, argv, words):
    (tmp_path / "empty").mkdir()
    err = _fails([a.format(tmp=tmp_path) for a in argv], capsys)
    assert words.format(tmp=tmp_path) in err and TRACEBACK not in err
    assert "dataset" not in err.lower()  # not a generic hint about datasets
