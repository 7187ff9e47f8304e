"""Keyring: AES-256-GCM authentication and encryption of every datagram and stream frame.

As in memberlist, the first key is primary (used to encrypt); every installed key is tried to
decrypt. A cluster rotates with no downtime: install the new key everywhere, make it primary
everywhere, remove the old one everywhere.

Sealed format: version byte (1) | 12-byte random nonce | ciphertext with 16-byte tag.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

VERSION = b"\x01"
NONCE = 12
AAD = b"gossip-agent/1"


class KeyringError(Exception):
    """A bad key or keyring file, phrased for the user."""


class AuthError(Exception):
    """A sealed message that no installed key opens."""


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"key {text[:8]}...: not base64") from None
    if len(key) != 32:
        raise KeyringError(f"key {text[:8]}...: {len(key)} bytes, expected 32 (AES-256)")
    return key


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:12]


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _aesgcm(key: bytes) -> Any:
    # Imported on first use: cryptography costs ~8 MB of RSS and ~5 MB of wheels, and most labs
    # run without a keyring, so it is the optional extra `gossip-agent[crypto]`.
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise KeyringError("a keyring needs the crypto extra: pip install 'gossip-agent[crypto]'") from None
    return AESGCM(key)


class Keyring:
    def __init__(self, keys: list[bytes], path: Path | None = None) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        self._keys = list(dict.fromkeys(keys))
        self._ciphers = [_aesgcm(k) for k in self._keys]
        from cryptography.exceptions import InvalidTag

        self._invalid_tag = InvalidTag
        self.path = path

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeyringError(f"{path}: no such keyring file") from None
        except (OSError, ValueError) as exc:
            raise KeyringError(f"{path}: not a JSON keyring: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise KeyringError(f'{path}: expected {{"keys": ["<base64 32-byte key>", ...]}} (first is primary)')
        return cls([decode_key(str(k)) for k in data["keys"]], path)

    def fingerprints(self) -> list[str]:
        return [fingerprint(k) for k in self._keys]

    def seal(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return VERSION + nonce + self._ciphers[0].encrypt(nonce, data, AAD)

    def open(self, sealed: bytes) -> bytes:
        if len(sealed) < 1 + NONCE + 16 or sealed[:1] != VERSION:
            raise AuthError("not a sealed message")
        nonce, body = sealed[1 : 1 + NONCE], sealed[1 + NONCE :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, AAD)
            except self._invalid_tag:
                continue
        raise AuthError("no installed key opens it")

    # --- rotation (each change is written back to the file, mode 0600) ---------------------------

    def install(self, key: bytes) -> None:
        if key not in self._keys:
            self._keys.append(key)
            self._ciphers.append(_aesgcm(key))
        self._save()

    def use(self, key: bytes) -> None:
        if key not in self._keys:
            raise KeyringError(f"key {fingerprint(key)} is not installed; install it first")
        index = self._keys.index(key)
        self._keys.insert(0, self._keys.pop(index))
        self._ciphers.insert(0, self._ciphers.pop(index))
        self._save()

    def remove(self, key: bytes) -> None:
        if key not in self._keys:
            raise KeyringError(f"key {fingerprint(key)} is not installed")
        if self._keys[0] == key:
            raise KeyringError("the primary key cannot be removed; make another key primary first")
        index = self._keys.index(key)
        del self._keys[index], self._ciphers[index]
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        text = json.dumps({"keys": [base64.b64encode(k).decode() for k in self._keys]})
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, self.path)
