"""Running one PowerShell script in a remote shell, as pywinrm's ``run_ps`` does.

The script goes UTF-16LE and base64 encoded in ``-EncodedCommand`` (no quoting
issues, no file on the host) through a shell's Create, Command, Receive, Signal
and Delete. Unlike ``run_ps`` the wait for output is bounded, and a failed script
raises a :class:`~lunasentri_core.RemoteError` carrying PowerShell's own message.
"""

from __future__ import annotations

import base64
import contextlib
import html
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Final

import attrs
import requests
from winrm.exceptions import WinRMOperationTimeoutError
from winrm.protocol import Protocol

from lunasentri_core import RemoteError, RemoteTimeoutError

POWERSHELL: Final = "powershell.exe"
_ARGUMENTS: Final = ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass")
_CLIXML_HEADER: Final = "#< CLIXML"
_ERROR_STRING = re.compile(r'<S S="Error">(.*?)</S>', re.DOTALL)
_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")
_MAX_MESSAGE: Final = 1000


class ScriptError(RemoteError):
    """The script ran on the host and failed: a non-zero exit code, PowerShell's message."""

    def __init__(self, host: str, exit_code: int, message: str) -> None:
        self.exit_code = exit_code
        self.message = message
        text = f"the PowerShell script failed on {host} (exit code {exit_code})"
        super().__init__(f"{text}: {message}" if message else text)


@attrs.frozen
class ScriptOutput:
    stdout: str
    stderr: str
    exit_code: int


def load_script(name: str) -> str:
    """A PowerShell script shipped in this package (``collect.ps1``, ``identify.ps1``)."""
    return resources.files("lunasentri_winrm").joinpath(name).read_text(encoding="utf-8")


def command_line(script: str) -> str:
    """The ``powershell.exe`` command line that runs ``script``, as ``run_ps`` builds it.

    One line rather than ``rsp:Arguments``: pywinrm joins arguments into one
    element anyway, and this is the shape Windows and every tool know.
    """
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return " ".join((POWERSHELL, *_ARGUMENTS, "-EncodedCommand", encoded))


def run_script(protocol: Protocol, script: str, *, timeout: float) -> ScriptOutput:
    """Run ``script`` in a new shell on the host; its output once it ended.

    Waits at most ``timeout`` seconds (plus one operation timeout) for the script
    to end, then raises :class:`~lunasentri_core.RemoteTimeoutError`. pywinrm's
    exceptions propagate (wrap the call in ``remote_errors``). The command and the
    shell are closed whatever happens, without hiding the first failure.
    """
    shell_id = protocol.open_shell(noprofile=True)
    try:
        command_id = protocol.run_command(shell_id, command_line(script))
        try:
            output = _receive_all(protocol, shell_id, command_id, timeout)
        except BaseException as error:
            if _host_answers(error):
                _ignoring_errors(lambda: protocol.cleanup_command(shell_id, command_id))
            raise
        protocol.cleanup_command(shell_id, command_id)
    except BaseException as error:
        if _host_answers(error):
            _ignoring_errors(lambda: protocol.close_shell(shell_id, close_session=False))
        raise
    protocol.close_shell(shell_id, close_session=False)
    return output


def _receive_all(
    protocol: Protocol, shell_id: str, command_id: str, timeout: float
) -> ScriptOutput:
    deadline = time.monotonic() + timeout
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    while True:
        if time.monotonic() > deadline:
            raise RemoteTimeoutError(f"the PowerShell script did not end within {timeout:g} s")
        try:
            out, err, exit_code, done = protocol.get_command_output_raw(shell_id, command_id)
        except WinRMOperationTimeoutError:
            continue  # no output within the operation timeout: the script still runs
        stdout.append(out)
        stderr.append(err)
        if done:
            return ScriptOutput(
                b"".join(stdout).decode("utf-8", "replace"),
                b"".join(stderr).decode("utf-8", "replace"),
                exit_code,
            )


def _host_answers(error: BaseException) -> bool:
    """Whether cleaning up is worth a try: not when the host timed out or went away,
    where each cleanup request would only wait as long again."""
    return not isinstance(error, requests.RequestException | OSError)


def _ignoring_errors(action: Callable[[], object]) -> None:
    """Clean up after a failure: a second error would only hide the first."""
    with contextlib.suppress(Exception):
        action()


def checked_stdout(output: ScriptOutput, host: str) -> str:
    """The script's output, or :class:`ScriptError` when it failed (non-zero exit code)."""
    if output.exit_code != 0:
        raise ScriptError(host, output.exit_code, error_message(output.stderr))
    return output.stdout


def error_message(stderr: str) -> str:
    """PowerShell's error text, from the CLIXML it writes to stderr (or plain text)."""
    text = stderr.strip()
    if text.startswith(_CLIXML_HEADER):
        lines = [_unescape(found) for found in _ERROR_STRING.findall(text)]
        text = "".join(lines)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _unescape(text: str) -> str:
    """CLIXML escapes: XML entities, and ``_x000D_`` for characters XML cannot carry."""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), html.unescape(text))
