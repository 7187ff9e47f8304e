"""Keyring: AES-256-GCM authentication and encryption of every datagram and stream frame.

As in memberlist, the first key is primary (used to encrypt); every installed key is tried to
decrypt. A cluster rotates with no downtime: install the new key everywhere, make it primary
everywhere, remove the old one everywhere.

Sealed format (version 2): version byte | 6-byte send time (ms since the epoch) | 12-byte nonce =
4-byte sender epoch (random per keyring, i.e. per process life) + 8-byte counter | ciphertext with
16-byte tag; the version byte and send time are authenticated as associated data.

Anti-replay, as IPsec and WireGuard do it: a receiver keeps, per sender epoch, the highest counter
seen and a sliding window of the counters below it, and drops a sealed message whose counter it has
seen or that fell out of the window; a message sent more than `max_age` seconds ago (by its
authenticated send time) is dropped whatever the receiver remembers, so a capture replayed after a
restart of the receiver, or after tombstones were reaped, is refused. This needs host clocks
within `max_age` of each other (NTP does far better).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from pathlib import Path
from typing import Any

VERSION = b"\x02"
STAMP = 6  # bytes of the send time in milliseconds
NONCE = 12
HEADER = 1 + STAMP + NONCE
TAG = 16
AAD = b"gossip-agent/2"
REPLAY_WINDOW = 4096  # counters below the highest seen that are still told apart
MAX_EPOCHS = 4096  # sender epochs remembered (one per live peer process, plus churn)
MAX_AGE = 120.0  # seconds a sealed message stays acceptable


class KeyringError(Exception):
    """A bad key or keyring file, phrased for the user."""


class AuthError(Exception):
    """A sealed message that no installed key opens."""


class ReplayError(AuthError):
    """An authentic sealed message that was seen before, or is too old to tell."""


class ReplayGuard:
    """Per sender epoch: the highest counter seen and a bitmap of the `REPLAY_WINDOW` below it."""

    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.max_age = max_age
        self._epochs: dict[bytes, tuple[int, int]] = {}  # epoch -> (highest counter, bitmap)

    def check_age(self, sent_ms: int, now: float) -> None:
        if abs(now * 1000 - sent_ms) > self.max_age * 1000:
            raise ReplayError("sent too long ago (or the clocks differ by more than the maximum age)")

    def check(self, epoch: bytes, counter: int, sent_ms: int, now: float) -> None:
        """Raise ReplayError for a replayed or stale message; otherwise remember it."""
        self.check_age(sent_ms, now)
        highest, seen = self._epochs.pop(epoch, (-1, 0))
        if counter > highest:
            shift = counter - highest
            seen = ((seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            highest = counter
        else:
            back = highest - counter
            if back >= REPLAY_WINDOW or seen >> back & 1:
                self._epochs[epoch] = (highest, seen)
                raise ReplayError("seen before, or older than the replay window")
            seen |= 1 << back
        self._epochs[epoch] = (highest, seen)  # re-inserted: the dict keeps the most recent last
        if len(self._epochs) > MAX_EPOCHS:
            del self._epochs[next(iter(self._epochs))]


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"key {text[:8]}...: not base64") from None
    if len(key) != 32:
        raise KeyringError(f"key {text[:8]}...: {len(key)} bytes, expected 32 (AES-256)")
    return key


def fingerprint(key: bytes) -> str:
    import hashlib  # here: at import it maps OpenSSL into agents that have no keyring

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
        self._epoch = os.urandom(4)
        self._counter = 0
        self.guard = ReplayGuard()

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

    def seal(self, data: bytes, now: float | None = None) -> bytes:
        self._counter += 1
        stamp = int((time.time() if now is None else now) * 1000).to_bytes(STAMP, "big")
        nonce = self._epoch + self._counter.to_bytes(8, "big")
        return VERSION + stamp + nonce + self._ciphers[0].encrypt(nonce, data, AAD + VERSION + stamp)

    def open(self, sealed: bytes, now: float | None = None, counted: bool = True) -> bytes:
        """The plaintext of an authentic message seen for the first time; AuthError otherwise.

        `counted=False` (stream frames) checks the age only: a large frame is read for seconds
        while its sender seals thousands of datagrams, so its counter can fall out of the window;
        a stream cannot be replayed into a sync we did not ask for (see Node._expect_push)."""
        if len(sealed) < HEADER + TAG or sealed[:1] != VERSION:
            raise AuthError("not a sealed message")
        stamp, nonce, body = sealed[1 : 1 + STAMP], sealed[1 + STAMP : HEADER], sealed[HEADER:]
        for cipher in self._ciphers:
            try:
                data: bytes = cipher.decrypt(nonce, body, AAD + VERSION + stamp)
            except self._invalid_tag:
                continue
            # Checked only once authentic: a forger must not be able to fill the window.
            sent = int.from_bytes(stamp, "big")
            when = time.time() if now is None else now
            if counted:
                self.guard.check(nonce[:4], int.from_bytes(nonce[4:], "big"), sent, when)
            else:
                self.guard.check_age(sent, when)
            return data
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
