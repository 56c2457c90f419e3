"""AES-256-GCM payload encryption for Temporal, with a rotating key ring.

A worker or client that connects with ``data_converter(key_ring)`` replaces every
payload it sends to the Temporal server with an encrypted one, so workflow
inputs, results and failures are stored encrypted. The key ring is a JSON
document::

    {"keys": [{"id": "k1", "key": "<base64 of 32 random bytes>"}, ...]}

The last key encrypts new payloads, and every key in the ring can decrypt.
Run ``python -m deployer.codec --help`` to generate or rotate a key ring file.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import os
import re
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

KEYS_ENV_VAR = "VENTROS_DEPLOY_CODEC_KEYS"

ENCODING = b"binary/encrypted"
ENCODING_METADATA_KEY = "encoding"
KEY_ID_METADATA_KEY = "encryption-key-id"

KEY_SIZE_BYTES = 32
NONCE_SIZE_BYTES = 12
TAG_SIZE_BYTES = 16

# Key ids travel in payload metadata and in error messages, so they are limited
# to characters that are safe to print and to use as AES-GCM associated data.
_MAX_KEY_ID_LENGTH = 64
_KEY_ID_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{_MAX_KEY_ID_LENGTH}}}")


class SecretFileError(ValueError):
    """Secret file that is missing, unreadable or accessible to other users."""


class KeyRingError(ValueError):
    """Invalid, missing or unsafe key ring configuration."""


class PayloadDecryptionError(ValueError):
    """Failure to decrypt a payload marked ``binary/encrypted``."""


class NoKeyRingError(PayloadDecryptionError):
    """Encrypted payload read by a process that has no key ring configured."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"the run's payloads are encrypted (key id {key_id!r}), and no key "
            "ring is configured here to decrypt them"
        )
        self.key_id = key_id


class UnknownKeyIdError(PayloadDecryptionError):
    """Encrypted payload whose key id is not in the key ring."""

    def __init__(self, key_id: str, known_key_ids: Sequence[str]) -> None:
        super().__init__(
            f"payload was encrypted with key id {key_id!r}, which is not in the "
            f"key ring (known key ids: {', '.join(known_key_ids)}). Add the old "
            "key back to the key ring to decrypt it"
        )
        self.key_id = key_id


@dataclasses.dataclass(frozen=True)
class EncryptionKey:
    """One AES-256 key and the id that payload metadata refers to it by."""

    key_id: str
    # repr=False keeps key bytes out of tracebacks, logs and test output.
    key: bytes = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID_PATTERN.fullmatch(self.key_id):
            raise KeyRingError(
                f"invalid key id {self.key_id!r}: use 1 to 64 characters from "
                "A-Z, a-z, 0-9, '.', '_' and '-'"
            )
        if len(self.key) != KEY_SIZE_BYTES:
            raise KeyRingError(
                f"key {self.key_id!r} is {len(self.key)} bytes, expected "
                f"{KEY_SIZE_BYTES} bytes (AES-256)"
            )

    @classmethod
    def generate(cls, existing_key_ids: Collection[str] = ()) -> EncryptionKey:
        """Create a random key whose id is not in ``existing_key_ids``."""
        return cls(
            key_id=_new_key_id(existing_key_ids),
            key=AESGCM.generate_key(bit_length=256),
        )


def _new_key_id(existing_key_ids: Collection[str]) -> str:
    # A UTC timestamp keeps ids in rotation order for readers of the file,
    # and the random suffix avoids collisions within the same second.
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    while True:
        key_id = f"k{timestamp}-{secrets.token_hex(3)}"
        if key_id not in existing_key_ids:
            return key_id


class KeyRing:
    """Ordered set of encryption keys. The last key encrypts, all keys decrypt."""

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        if not keys:
            raise KeyRingError("key ring is empty: it needs at least one key")
        self._keys = tuple(keys)
        self._ciphers: dict[str, AESGCM] = {}
        for key in self._keys:
            if key.key_id in self._ciphers:
                raise KeyRingError(f"key id {key.key_id!r} appears more than once")
            self._ciphers[key.key_id] = AESGCM(key.key)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self.key_ids)!r})"

    @property
    def keys(self) -> tuple[EncryptionKey, ...]:
        return self._keys

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key.key_id for key in self._keys)

    @property
    def current_key_id(self) -> str:
        """Id of the newest key, which encrypts all new payloads."""
        return self._keys[-1].key_id

    def cipher(self, key_id: str) -> AESGCM | None:
        """Return the AES-GCM cipher for ``key_id``, or None if the ring lacks it."""
        return self._ciphers.get(key_id)

    def current_cipher(self) -> tuple[str, AESGCM]:
        """Return the newest key's id and cipher, which encrypt new payloads."""
        key_id = self.current_key_id
        return key_id, self._ciphers[key_id]

    def with_new_key(self) -> KeyRing:
        """Return a copy of this ring with a new random key appended as newest."""
        return KeyRing([*self._keys, EncryptionKey.generate(self.key_ids)])

    @classmethod
    def generate(cls) -> KeyRing:
        """Create a ring with one new random key."""
        return cls([EncryptionKey.generate()])

    @classmethod
    def from_json(cls, text: str, source: str) -> KeyRing:
        """Parse a key ring document. ``source`` names its origin in errors."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            # exc.msg and the position never contain the document text itself.
            raise KeyRingError(
                f"{source}: invalid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
        entries = _key_entries(document, source)
        keys = [_parse_key_entry(entry, index, source) for index, entry in entries]
        try:
            return cls(keys)
        except KeyRingError as exc:
            raise KeyRingError(f"{source}: {exc}") from None

    def to_json(self) -> str:
        document = {
            "keys": [
                {"id": key.key_id, "key": base64.b64encode(key.key).decode("ascii")}
                for key in self._keys
            ]
        }
        return json.dumps(document, indent=2) + "\n"


def _key_entries(document: Any, source: str) -> list[tuple[int, Any]]:
    if not isinstance(document, dict):
        raise KeyRingError(f'{source}: expected a JSON object with a "keys" list')
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise KeyRingError(f'{source}: missing "keys" list')
    if not entries:
        raise KeyRingError(f'{source}: "keys" is empty: it needs at least one key')
    return list(enumerate(entries))


def _parse_key_entry(entry: Any, index: int, source: str) -> EncryptionKey:
    where = f"{source}: keys[{index}]"
    if not isinstance(entry, dict):
        raise KeyRingError(f'{where}: expected an object with "id" and "key"')
    key_id = entry.get("id")
    if not isinstance(key_id, str):
        raise KeyRingError(f'{where}: missing string "id"')
    encoded_key = entry.get("key")
    if not isinstance(encoded_key, str):
        raise KeyRingError(f'{where} (id {key_id!r}): missing string "key"')
    try:
        key = base64.b64decode(encoded_key, validate=True)
    except binascii.Error:
        # The message leaves out the value because it may be most of a real key.
        raise KeyRingError(
            f'{where} (id {key_id!r}): "key" is not valid base64'
        ) from None
    try:
        return EncryptionKey(key_id=key_id, key=key)
    except KeyRingError as exc:
        raise KeyRingError(f"{where}: {exc}") from None


def read_private_file(path: str) -> str:
    """Read a secret file, rejecting it if group or others have any access.

    Raises SecretFileError when the file is missing, unreadable, not UTF-8 or
    has any of the mode bits 0o077 set.
    """
    try:
        with open(path, encoding="utf-8") as file:
            # fstat on the open file checks the same inode that is read below.
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            if mode & 0o077:
                raise SecretFileError(
                    f"{path} has mode {mode:04o}, which lets group or others "
                    f"access it. Run: chmod 600 {path}"
                )
            return file.read()
    except FileNotFoundError:
        raise SecretFileError(f"file not found: {path}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not valid UTF-8 text") from None
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror}") from None


def load_key_ring(path: str | None, env: Mapping[str, str] = os.environ) -> KeyRing:
    """Load the key ring from ``path`` or, when it is None, from the environment.

    Raises KeyRingError when neither source is set or the key ring is invalid.
    """
    if path is not None:
        try:
            text = read_private_file(path)
        except SecretFileError as exc:
            raise KeyRingError(f"key ring file: {exc}") from None
        return KeyRing.from_json(text, f"key ring file {path}")
    env_text = env.get(KEYS_ENV_VAR)
    if env_text is None:
        raise KeyRingError(
            f"no key ring configured: give a key ring file path or set {KEYS_ENV_VAR} "
            'to a JSON document {"keys": [{"id": ..., "key": ...}]}'
        )
    return KeyRing.from_json(env_text, f"environment variable {KEYS_ENV_VAR}")


def _write_private_file(path: str, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600 in one atomic step.

    Without ``replace``, FileExistsError is raised if ``path`` exists.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # mkstemp creates the file with mode 0600, so no other user can read the
    # new keys between the write and the rename.
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".keyring-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temp_path, path)
        else:
            # link() fails if path exists, unlike rename(), so a file created
            # after any earlier existence check is still never overwritten.
            os.link(temp_path, path)
    finally:
        if os.path.lexists(temp_path):
            os.unlink(temp_path)


def generate_key_ring_file(path: str, *, exist_ok: bool = False) -> KeyRing:
    """Write a new key ring with one random key to ``path`` with mode 0600.

    An existing file is never overwritten, because that would make every payload
    encrypted with its keys unreadable. With ``exist_ok`` the existing ring is
    loaded and returned, and without it KeyRingError is raised.
    """
    key_ring = KeyRing.generate()
    try:
        _write_private_file(path, key_ring.to_json(), replace=False)
    except FileExistsError:
        if exist_ok:
            return load_key_ring(path)
        raise KeyRingError(
            f"key ring file {path} already exists. Rotate it to add a key, "
            "or delete it first if its payloads are no longer needed."
        ) from None
    return key_ring


def rotate_key_ring_file(path: str) -> KeyRing:
    """Append a new random key to the key ring file at ``path``.

    The new key encrypts from the next process start on, and the old keys stay
    in the file so that payloads already stored can still be decrypted.
    """
    key_ring = load_key_ring(path).with_new_key()
    _write_private_file(path, key_ring.to_json(), replace=True)
    return key_ring


class EncryptionCodec(temporalio.converter.PayloadCodec):
    """Payload codec that encrypts every payload with AES-256-GCM.

    An encrypted payload has metadata ``encoding: binary/encrypted`` and
    ``encryption-key-id: <key id>``. Its data is a 12-byte random nonce followed
    by the AES-GCM ciphertext and tag of the serialized original Payload, with
    the key id as associated data, so that changing the metadata fails the
    decryption.
    """

    def __init__(
        self,
        key_ring: KeyRing,
        on_plaintext: Callable[[Payload], None] | None = None,
    ) -> None:
        self._key_ring = key_ring
        # Called with each unencrypted payload that decode passes through.
        self._on_plaintext = on_plaintext

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt_payload(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt_payload(payload) for payload in payloads]

    def encrypt_payload(self, payload: Payload) -> Payload:
        key_id, cipher = self._key_ring.current_cipher()
        # NIST SP 800-38D allows at most 2**32 encryptions per key with random
        # 96-bit nonces. Rotating the key ring starts a new count.
        nonce = os.urandom(NONCE_SIZE_BYTES)
        ciphertext = cipher.encrypt(
            nonce, payload.SerializeToString(), key_id.encode("ascii")
        )
        return Payload(
            metadata={
                ENCODING_METADATA_KEY: ENCODING,
                KEY_ID_METADATA_KEY: key_id.encode("ascii"),
            },
            data=nonce + ciphertext,
        )

    def decrypt_payload(self, payload: Payload) -> Payload:
        """Decrypt ``payload``, or return it unchanged if it is not encrypted."""
        if payload.metadata.get(ENCODING_METADATA_KEY) != ENCODING:
            if self._on_plaintext is not None:
                self._on_plaintext(payload)
            return payload
        key_id = _payload_key_id(payload)
        cipher = self._key_ring.cipher(key_id)
        if cipher is None:
            raise UnknownKeyIdError(key_id, self._key_ring.key_ids)
        plaintext = _decrypt_data(cipher, payload.data, key_id)
        original = Payload()
        try:
            original.ParseFromString(plaintext)
        except DecodeError:
            raise PayloadDecryptionError(
                f"payload decrypted with key id {key_id!r} does not contain a "
                "valid serialized Payload"
            ) from None
        return original


def _payload_key_id(payload: Payload) -> str:
    raw_key_id = payload.metadata.get(KEY_ID_METADATA_KEY)
    if raw_key_id is None:
        raise PayloadDecryptionError(
            f"encrypted payload has no {KEY_ID_METADATA_KEY!r} metadata"
        )
    if len(raw_key_id) > _MAX_KEY_ID_LENGTH:
        # Ring ids are never this long, and the cap keeps error messages short.
        raise PayloadDecryptionError(
            f"encrypted payload has a {len(raw_key_id)}-byte key id, longer than "
            f"the {_MAX_KEY_ID_LENGTH}-character maximum"
        )
    # "replace" turns invalid UTF-8 into U+FFFD, which no ring id contains.
    return raw_key_id.decode("utf-8", errors="replace")


def _decrypt_data(cipher: AESGCM, data: bytes, key_id: str) -> bytes:
    if len(data) < NONCE_SIZE_BYTES + TAG_SIZE_BYTES:
        raise PayloadDecryptionError(
            f"encrypted payload with key id {key_id!r} is {len(data)} bytes, "
            f"shorter than the {NONCE_SIZE_BYTES}-byte nonce plus "
            f"{TAG_SIZE_BYTES}-byte tag"
        )
    nonce, ciphertext = data[:NONCE_SIZE_BYTES], data[NONCE_SIZE_BYTES:]
    try:
        return cipher.decrypt(nonce, ciphertext, key_id.encode("ascii"))
    except InvalidTag:
        raise PayloadDecryptionError(
            f"encrypted payload with key id {key_id!r} failed authentication: "
            "its data or metadata was modified, or the key stored under this id "
            "differs from the key that encrypted it"
        ) from None


class PlaintextCodec(temporalio.converter.PayloadCodec):
    """Payload codec for a process without a key ring.

    It sends payloads unchanged. On reading an encrypted payload it raises
    NoKeyRingError, where the plain payload converter would raise a bare
    KeyError for the unknown encoding.
    """

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for payload in payloads:
            if payload.metadata.get(ENCODING_METADATA_KEY) == ENCODING:
                raise NoKeyRingError(_payload_key_id(payload))
        return list(payloads)


def plaintext_data_converter() -> temporalio.converter.DataConverter:
    """Return the project's pydantic data converter without encryption."""
    return dataclasses.replace(pydantic_data_converter, payload_codec=PlaintextCodec())


def data_converter(
    key_ring: KeyRing, on_plaintext: Callable[[Payload], None] | None = None
) -> temporalio.converter.DataConverter:
    """Return the project's pydantic data converter with payload encryption.

    on_plaintext is called with each payload that arrives unencrypted.

    Failure messages and stack traces move into an encoded payload too.
    Without that they are plain text in history, and a helm error quoted in
    one may contain values from the request.
    """
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(key_ring, on_plaintext),
        failure_converter_class=(
            temporalio.converter.DefaultFailureConverterWithEncodedAttributes
        ),
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployer.codec",
        description="Create or rotate the AES-256 key ring file that encrypts "
        "Temporal payloads.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate",
        help="write a new key ring file with one random key and mode 0600",
    )
    generate.add_argument("path", help="key ring file to create")
    generate.add_argument(
        "--exist-ok",
        action="store_true",
        help="succeed without changes if the file already exists and is valid",
    )
    rotate = commands.add_parser(
        "rotate",
        help="append a new random key, which then encrypts; old keys still decrypt",
    )
    rotate.add_argument("path", help="existing key ring file to update")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            key_ring = generate_key_ring_file(args.path, exist_ok=args.exist_ok)
        else:
            key_ring = rotate_key_ring_file(args.path)
    except KeyRingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.path}: {len(key_ring.keys)} key(s), new payloads are encrypted "
        f"with key id {key_ring.current_key_id}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
