"""chat.py end to end: piped prompts, slash commands, the newest run, errors, and --serve."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import _tiny_chat as tiny
import pytest

from gpt.chat.cli import main
from gpt.cli import fail_cleanly

REPO = Path(__file__).resolve().parents[1]
CHAT = str(REPO / "chat.py")


def run_chat(args, stdin=""):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, CHAT, *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    """A checkpoint that always writes "a": replies are predictable, never end early."""
    return tiny.checkpoint(tmp_path_factory.mktemp("ckpt") / "always-a", block_size=256,
                           rigged="a")


def test_piped_prompts_get_one_reply_each(rigged):
    result = run_chat(["--ckpt", str(rigged), "--max-new-tokens", "5"],
                      "Once upon a time\n\n/max 3\nThe end\n/reset\n/help\nagain")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "aaaaa\naaa\naaa\n"              # replies only, one per message
    assert "max 3 tokens" in result.stderr and "conversation forgotten" in result.stderr
    assert "/quit" in result.stderr                          # the help text
    assert "you>" not in result.stdout + result.stderr       # no prompt decoration in a pipe


def chat_in_process(args, stdin):
    """(exit status, stdout) of chat.py's main run here, with fail_cleanly as chat.py does."""
    out = io.StringIO()
    status = fail_cleanly(lambda: main(args, stdin=io.StringIO(stdin), stdout=out))
    return status, out.getvalue()


def test_quit_and_bad_messages(rigged, capsys):
    status, out = chat_in_process(["--ckpt", str(rigged), "--max-new-tokens", "2"],
                                  "café\nok\n/temp hot\n/nonsense\n/quit\nnever read\n")
    err = capsys.readouterr().err
    assert status == 1                                       # a message failed
    assert out == "aa\n"
    assert "error: cannot encode the prompt" in err
    assert "error: /temp hot" in err and "unknown command /nonsense" in err


def test_without_ckpt_the_newest_run_is_used(tmp_path, monkeypatch):
    tiny.checkpoint(tmp_path / "runs" / "20260101-000000" / "latest", rigged="a")
    monkeypatch.chdir(tmp_path)
    assert chat_in_process(["--max-new-tokens", "3"], "hi\n") == (0, "aaa\n")


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "no/such/dir"], "error: checkpoint no/such/dir does not exist"),
    ([], "error: no --ckpt given and no training run in runs/"),
    (["--temperature", "-1"], "error: temperature must be a finite number >= 0"),
    (["--threads", "0"], "error: --threads must be at least 1"),
    (["--temperature", "nan"], "error: temperature must be a finite number >= 0"),
    (["--seed", "-1"], "error: seed must be >= 0"),
    (["--max-new-tokens", "99999999"], "error: max_new_tokens must be in [0, 4096]"),
])
def test_bad_command_lines_print_one_error_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert chat_in_process(args, "hi\n") == (1, "")
    assert capsys.readouterr().err.startswith(message)


def test_slash_commands_refuse_what_the_server_refuses(rigged, capsys):
    status, out = chat_in_process(["--ckpt", str(rigged), "--max-new-tokens", "2"],
                                  "/max 99999999\n/temp nan\nhi\n")
    err = capsys.readouterr().err
    assert "error: /max 99999999: max_new_tokens must be in [0, 4096]" in err
    assert "error: /temp nan: temperature must be a finite number" in err
    assert (status, out) == (0, "aa\n")                      # the old settings still apply


def test_in_process_history_and_settings(rigged, capsys):
    out = io.StringIO()
    status = main(["--ckpt", str(rigged), "--max-new-tokens", "4", "--template", "alpaca",
                   "--threads", "1"],
                  stdin=io.StringIO("Name a colour.\n/temp 0\n/top_k 0\n/settings\n"),
                  stdout=out)
    assert status == 0 and out.getvalue() == "aaaa\n"
    assert "temperature 0, top_k off" in capsys.readouterr().err


def sigint_as_from_a_terminal() -> None:
    """Run in the child before chat.py starts. A suite started in the background by a shell
    without job control inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    handler: the server would not stop on the SIGINT this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_from_the_command_line(rigged):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, CHAT, "--ckpt", str(rigged), "--serve",
                                "--port", "0", "--quiet"], stderr=subprocess.PIPE, text=True,
                               env=env, preexec_fn=sigint_as_from_a_terminal)
    try:
        banner = process.stderr.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/", banner).group(1)
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
            assert json.load(response)["data"][0]["id"] == "always-a"
        request = urllib.request.Request(
            url + "/v1/chat/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 3}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "aaa"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        process.stderr.close()


def test_a_gpt2_name_means_the_downloaded_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DU_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert chat_in_process(["--ckpt", "gpt2"], "hi\n") == (1, "")
    assert "python -m gpt.download gpt2" in capsys.readouterr().err
    # (a stand-in for the real download: any checkpoint in that directory)
    tiny.checkpoint(tmp_path / "models" / "gpt2", rigged="a")
    assert chat_in_process(["--ckpt", "gpt2", "--max-new-tokens", "2"], "hi\n") == (0, "aa\n")
