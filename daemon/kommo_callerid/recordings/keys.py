"""The signing key of recording links: the credential ``recordings_key``, else one generated
once with :mod:`secrets` into a file beside ``[kommo] token_file`` (the service's state
directory), mode 0600.

Links live for ever in Kommo's notes, so the generated key must survive restarts: it is
written to a private temporary file, flushed, then hard-linked into place, which either
creates the key file whole or finds one another process made first (never a half-written
key). Rotating the key (a new credential, or deleting the file) kills every older link.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

#: The generated key's file name, in the state directory.
KEY_FILE = "recordings.key"
#: A credential shorter than this is refused: a guessable key signs anyone's links.
MIN_KEY_LENGTH = 16


class SigningKeyError(Exception):
    """The signing key cannot be had; the message is a sentence for the operator."""


def signing_key(credential: SecretStr, state_directory: Path) -> bytes:
    """The key to sign and check links with (never logged)."""
    given = credential.get_secret_value().strip()
    if given:
        if len(given) < MIN_KEY_LENGTH:
            raise SigningKeyError(
                f"The recordings_key credential is shorter than {MIN_KEY_LENGTH} characters: "
                "use a random one, e.g. `openssl rand -base64 32`."
            )
        return given.encode()
    return _generated(state_directory / KEY_FILE)


def _generated(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SigningKeyError(_sentence(path, exc)) from None
    temporary = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            os.link(temporary, path)
        return _read(path)
    except OSError as exc:
        raise SigningKeyError(_sentence(path, exc)) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _read(path: Path) -> bytes:
    try:
        key = path.read_text(encoding="ascii").strip()
    except UnicodeDecodeError:
        raise OSError("it holds no key this daemon wrote (delete it: a new one is made)") from None
    if len(key) < MIN_KEY_LENGTH:
        raise OSError("it holds no usable key (delete it to have a new one made)")
    return key.encode()


def _sentence(path: Path, exc: OSError) -> str:
    return (
        f"The recordings signing key {path} cannot be used: {exc.strerror or exc}. It lives "
        "beside [kommo] token_file (the service's state directory), or set the credential "
        "file recordings_key."
    )
