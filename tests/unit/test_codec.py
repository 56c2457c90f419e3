"""Tests for the AES-GCM payload codec and key ring loading in deployer.codec."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pydantic
import pytest
import structlog
from temporalio.api.common.v1 import Payload

from deployer.codec import (
    ENCODING,
    KEY_ID_METADATA_KEY,
    KEYS_ENV_VAR,
    NONCE_SIZE_BYTES,
    EncryptionCodec,
    EncryptionKey,
    KeyRing,
    KeyRingError,
    PayloadDecryptionError,
    SecretFileError,
    UnknownKeyIdError,
    data_converter,
    generate_key_ring_file,
    load_key_ring,
    main,
    read_private_file,
    rotate_key_ring_file,
)
from worker.main import warn_plaintext

PLAINTEXT = b'{"app": "ventros-demo", "image": "registry.local/secret-marker:1.0"}'


def _plain_payload() -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=PLAINTEXT)


def _key_ring_json(*entries: tuple[str, str]) -> str:
    return json.dumps({"keys": [{"id": key_id, "key": key} for key_id, key in entries]})


def _random_key_b64() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _write_file(path: Path, text: str, mode: int) -> str:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return str(path)


def _file_mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def _encrypt(key_ring: KeyRing, payload: Payload) -> Payload:
    [encrypted] = await EncryptionCodec(key_ring).encode([payload])
    return encrypted


async def _decrypt(key_ring: KeyRing, payload: Payload) -> Payload:
    [decrypted] = await EncryptionCodec(key_ring).decode([payload])
    return decrypted


def _assert_no_secrets(message: str, key_ring: KeyRing) -> None:
    for key in key_ring.keys:
        assert base64.b64encode(key.key).decode("ascii") not in message
        assert key.key.hex() not in message
    assert "secret-marker" not in message


@pytest.mark.asyncio
async def test_codec_round_trip() -> None:
    key_ring = KeyRing.generate()
    original = _plain_payload()

    decrypted = await _decrypt(key_ring, await _encrypt(key_ring, original))

    assert decrypted == original


@pytest.mark.asyncio
async def test_codec_round_trip_many_payloads() -> None:
    key_ring = KeyRing.generate()
    originals = [
        Payload(metadata={"encoding": b"json/plain"}, data=f'"{index}"'.encode())
        for index in range(5)
    ] + [Payload(metadata={"encoding": b"binary/null"})]
    codec = EncryptionCodec(key_ring)

    decrypted = await codec.decode(await codec.encode(originals))

    assert decrypted == originals


@pytest.mark.asyncio
async def test_ciphertext_excludes_plaintext() -> None:
    key_ring = KeyRing.generate()

    encrypted = await _encrypt(key_ring, _plain_payload())

    assert PLAINTEXT not in encrypted.data
    assert b"secret-marker" not in encrypted.SerializeToString()
    assert b"json/plain" not in encrypted.SerializeToString()


@pytest.mark.asyncio
async def test_encrypted_metadata_names_key_id() -> None:
    key_ring = KeyRing.generate()

    encrypted = await _encrypt(key_ring, _plain_payload())

    assert encrypted.metadata["encoding"] == ENCODING
    assert encrypted.metadata[KEY_ID_METADATA_KEY] == key_ring.current_key_id.encode()
    assert set(encrypted.metadata) == {"encoding", KEY_ID_METADATA_KEY}


@pytest.mark.asyncio
async def test_encrypt_uses_fresh_nonce() -> None:
    key_ring = KeyRing.generate()

    first = await _encrypt(key_ring, _plain_payload())
    second = await _encrypt(key_ring, _plain_payload())

    assert first.data[:NONCE_SIZE_BYTES] != second.data[:NONCE_SIZE_BYTES]
    assert first.data != second.data


@pytest.mark.asyncio
async def test_unencrypted_payload_passes_through() -> None:
    key_ring = KeyRing.generate()
    original = _plain_payload()

    decoded = await _decrypt(key_ring, original)

    assert decoded == original


@pytest.mark.asyncio
async def test_unencrypted_payload_reported() -> None:
    """The worker's codec reports each payload that arrived unencrypted, and
    only those, so that a start without the codec is noticed."""
    key_ring = KeyRing.generate()
    seen: list[Payload] = []
    codec = EncryptionCodec(key_ring, seen.append)
    plain = _plain_payload()

    decoded = await codec.decode([await _encrypt(key_ring, plain), plain])

    assert decoded == [plain, plain]
    assert seen == [plain]


def test_worker_warning_omits_payload() -> None:
    """The worker's warning names the encoding, never the payload's data."""
    with structlog.testing.capture_logs() as logs:
        warn_plaintext(_plain_payload())

    assert len(logs) == 1
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["encoding"] == "json/plain"
    assert "secret-marker" not in json.dumps(logs[0])


@pytest.mark.asyncio
async def test_rotation_old_payload_decrypts() -> None:
    old_ring = KeyRing.generate()
    new_ring = old_ring.with_new_key()
    encrypted_before_rotation = await _encrypt(old_ring, _plain_payload())

    decrypted = await _decrypt(new_ring, encrypted_before_rotation)

    assert decrypted == _plain_payload()


@pytest.mark.asyncio
async def test_rotation_encrypts_with_new_key() -> None:
    old_ring = KeyRing.generate()
    new_ring = old_ring.with_new_key()

    encrypted = await _encrypt(new_ring, _plain_payload())

    assert new_ring.key_ids[:-1] == old_ring.key_ids
    assert new_ring.current_key_id != old_ring.current_key_id
    assert encrypted.metadata[KEY_ID_METADATA_KEY] == new_ring.current_key_id.encode()
    assert await _decrypt(new_ring, encrypted) == _plain_payload()


@pytest.mark.asyncio
async def test_unknown_key_id_error() -> None:
    writer_ring = KeyRing.generate()
    reader_ring = KeyRing.generate()
    encrypted = await _encrypt(writer_ring, _plain_payload())

    with pytest.raises(UnknownKeyIdError) as excinfo:
        await _decrypt(reader_ring, encrypted)

    message = str(excinfo.value)
    assert excinfo.value.key_id == writer_ring.current_key_id
    assert repr(writer_ring.current_key_id) in message
    assert "Add the old key back to the key ring" in message
    _assert_no_secrets(message, writer_ring)
    _assert_no_secrets(message, reader_ring)


def _flip_byte(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "byte_index",
    [0, NONCE_SIZE_BYTES - 1, NONCE_SIZE_BYTES, NONCE_SIZE_BYTES + 5, -1],
    ids=["nonce-first", "nonce-last", "ciphertext-first", "ciphertext-middle", "tag"],
)
async def test_tampered_data_error(byte_index: int) -> None:
    key_ring = KeyRing.generate()
    encrypted = await _encrypt(key_ring, _plain_payload())
    tampered = Payload()
    tampered.CopyFrom(encrypted)
    tampered.data = _flip_byte(encrypted.data, byte_index)

    with pytest.raises(PayloadDecryptionError) as excinfo:
        await _decrypt(key_ring, tampered)

    message = str(excinfo.value)
    assert "failed authentication" in message
    assert repr(key_ring.current_key_id) in message
    _assert_no_secrets(message, key_ring)


@pytest.mark.asyncio
async def test_swapped_key_id_fails_authentication() -> None:
    # Both keys are in the ring, so only the associated data catches the swap.
    key_ring = KeyRing.generate().with_new_key()
    old_key_id, new_key_id = key_ring.key_ids
    encrypted = await _encrypt(key_ring, _plain_payload())
    encrypted.metadata[KEY_ID_METADATA_KEY] = old_key_id.encode()

    with pytest.raises(PayloadDecryptionError) as excinfo:
        await _decrypt(key_ring, encrypted)

    assert "failed authentication" in str(excinfo.value)
    assert new_key_id != old_key_id


@pytest.mark.asyncio
async def test_truncated_data_error() -> None:
    key_ring = KeyRing.generate()
    encrypted = await _encrypt(key_ring, _plain_payload())
    encrypted.data = encrypted.data[:20]

    with pytest.raises(PayloadDecryptionError, match="shorter than the 12-byte nonce"):
        await _decrypt(key_ring, encrypted)


@pytest.mark.asyncio
async def test_missing_key_id_metadata_error() -> None:
    key_ring = KeyRing.generate()
    encrypted = await _encrypt(key_ring, _plain_payload())
    del encrypted.metadata[KEY_ID_METADATA_KEY]

    with pytest.raises(PayloadDecryptionError, match="encryption-key-id"):
        await _decrypt(key_ring, encrypted)


def test_key_repr_hides_key_bytes() -> None:
    key_ring = KeyRing.generate()
    key = key_ring.keys[0]

    assert key.key.hex() not in repr(key)
    assert str(key.key) not in repr(key)
    assert str(key.key) not in repr(key_ring)
    assert key.key_id in repr(key_ring)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o610])
def test_key_file_shared_mode_rejected(tmp_path: Path, mode: int) -> None:
    path = _write_file(tmp_path / "keys.json", KeyRing.generate().to_json(), mode)

    with pytest.raises(KeyRingError) as excinfo:
        load_key_ring(path)

    message = str(excinfo.value)
    assert path in message
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_key_file_owner_only_accepted(tmp_path: Path, mode: int) -> None:
    key_ring = KeyRing.generate()
    path = _write_file(tmp_path / "keys.json", key_ring.to_json(), mode)

    loaded = load_key_ring(path)

    assert loaded.key_ids == key_ring.key_ids
    assert loaded.keys == key_ring.keys


def test_key_file_missing_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.json")

    with pytest.raises(KeyRingError, match="file not found") as excinfo:
        load_key_ring(path)

    assert path in str(excinfo.value)


def test_read_private_file_rejects_world_readable(tmp_path: Path) -> None:
    path = _write_file(tmp_path / "token", "value", 0o604)

    with pytest.raises(SecretFileError, match="chmod 600"):
        read_private_file(path)


def test_key_ring_loads_from_env_var() -> None:
    key = _random_key_b64()
    env = {KEYS_ENV_VAR: _key_ring_json(("old", _random_key_b64()), ("new", key))}

    key_ring = load_key_ring(None, env=env)

    assert key_ring.key_ids == ("old", "new")
    assert key_ring.current_key_id == "new"
    assert key_ring.keys[-1].key == base64.b64decode(key)


def test_key_ring_file_wins_over_env_var(tmp_path: Path) -> None:
    file_ring = KeyRing.generate()
    path = _write_file(tmp_path / "keys.json", file_ring.to_json(), 0o600)
    env = {KEYS_ENV_VAR: _key_ring_json(("from-env", _random_key_b64()))}

    key_ring = load_key_ring(path, env=env)

    assert key_ring.key_ids == file_ring.key_ids


def test_key_ring_unconfigured_error() -> None:
    with pytest.raises(KeyRingError) as excinfo:
        load_key_ring(None, env={})

    assert KEYS_ENV_VAR in str(excinfo.value)
    assert "no key ring configured" in str(excinfo.value)


_SHORT_KEY_B64 = base64.b64encode(b"\x01" * 16).decode("ascii")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{not json", "invalid JSON: Expecting property name"),
        ('["k1"]', 'expected a JSON object with a "keys" list'),
        ('{"key": []}', 'missing "keys" list'),
        ('{"keys": []}', '"keys" is empty'),
        ('{"keys": ["k1"]}', 'keys[0]: expected an object with "id" and "key"'),
        ('{"keys": [{"key": "AAAA"}]}', 'keys[0]: missing string "id"'),
        ('{"keys": [{"id": "k1"}]}', "keys[0] (id 'k1'): missing string \"key\""),
        (
            '{"keys": [{"id": "k1", "key": "not base64!!"}]}',
            "keys[0] (id 'k1'): \"key\" is not valid base64",
        ),
        (
            _key_ring_json(("k1", _SHORT_KEY_B64)),
            "key 'k1' is 16 bytes, expected 32 bytes (AES-256)",
        ),
        (_key_ring_json(("bad id/", _random_key_b64())), "invalid key id 'bad id/'"),
        (
            _key_ring_json(("k1", _random_key_b64()), ("k1", _random_key_b64())),
            "key id 'k1' appears more than once",
        ),
    ],
    ids=[
        "invalid-json",
        "not-object",
        "missing-keys",
        "empty-keys",
        "entry-not-object",
        "missing-id",
        "missing-key",
        "bad-base64",
        "wrong-key-length",
        "bad-key-id",
        "duplicate-id",
    ],
)
def test_invalid_key_ring_error(document: str, expected: str) -> None:
    with pytest.raises(KeyRingError) as excinfo:
        load_key_ring(None, env={KEYS_ENV_VAR: document})

    message = str(excinfo.value)
    assert expected in message
    assert f"environment variable {KEYS_ENV_VAR}" in message
    assert _SHORT_KEY_B64 not in message
    assert "not base64!!" not in message


def test_invalid_key_file_error_names_path(tmp_path: Path) -> None:
    path = _write_file(tmp_path / "keys.json", "{", 0o600)

    with pytest.raises(KeyRingError) as excinfo:
        load_key_ring(path)

    assert f"key ring file {path}: invalid JSON" in str(excinfo.value)


def test_encryption_key_rejects_wrong_length() -> None:
    with pytest.raises(KeyRingError, match="is 24 bytes, expected 32 bytes"):
        EncryptionKey(key_id="k1", key=os.urandom(24))


def test_generate_key_ring_file_mode_0600(tmp_path: Path) -> None:
    path = str(tmp_path / "nested" / "keys.json")

    key_ring = generate_key_ring_file(path)

    assert _file_mode(path) == 0o600
    assert len(key_ring.keys) == 1
    assert load_key_ring(path).keys == key_ring.keys


def test_generate_key_ring_file_keeps_existing(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    first = generate_key_ring_file(path)

    with pytest.raises(KeyRingError, match="already exists"):
        generate_key_ring_file(path)
    second = generate_key_ring_file(path, exist_ok=True)

    assert second.keys == first.keys
    assert load_key_ring(path).keys == first.keys
    assert [name for name in os.listdir(tmp_path) if name != "keys.json"] == []


@pytest.mark.asyncio
async def test_rotate_key_ring_file(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    old_ring = generate_key_ring_file(path)
    encrypted_before_rotation = await _encrypt(old_ring, _plain_payload())

    rotated = rotate_key_ring_file(path)
    reloaded = load_key_ring(path)

    assert _file_mode(path) == 0o600
    assert reloaded.keys == rotated.keys
    assert reloaded.keys[:-1] == old_ring.keys
    assert reloaded.current_key_id not in old_ring.key_ids
    assert await _decrypt(reloaded, encrypted_before_rotation) == _plain_payload()
    assert [name for name in os.listdir(tmp_path) if name != "keys.json"] == []


def test_rotate_rejects_insecure_file(tmp_path: Path) -> None:
    path = _write_file(tmp_path / "keys.json", KeyRing.generate().to_json(), 0o644)

    with pytest.raises(KeyRingError, match="chmod 600"):
        rotate_key_ring_file(path)


class _DeployRequest(pydantic.BaseModel):
    app: str
    replicas: int


@pytest.mark.asyncio
async def test_data_converter_encrypts_pydantic() -> None:
    key_ring = KeyRing.generate()
    converter = data_converter(key_ring)
    request = _DeployRequest(app="secret-marker", replicas=3)

    [encoded] = await converter.encode([request])
    [decoded] = await converter.decode([encoded], [_DeployRequest])

    assert encoded.metadata["encoding"] == ENCODING
    assert b"secret-marker" not in encoded.data
    assert decoded == request
    assert isinstance(converter.payload_codec, EncryptionCodec)


def test_cli_generate_then_rotate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "keys.json")

    assert main(["generate", path]) == 0
    assert main(["generate", path]) == 1
    assert main(["generate", "--exist-ok", path]) == 0
    assert main(["rotate", path]) == 0

    key_ring = load_key_ring(path)
    output = capsys.readouterr()
    assert len(key_ring.keys) == 2
    assert key_ring.current_key_id in output.out
    assert "already exists" in output.err
    _assert_no_secrets(output.out + output.err, key_ring)


@pytest.mark.asyncio
async def test_oversized_key_id_error() -> None:
    key_ring = KeyRing.generate()
    encrypted = await _encrypt(key_ring, _plain_payload())
    encrypted.metadata[KEY_ID_METADATA_KEY] = b"k" * 10_000

    with pytest.raises(PayloadDecryptionError) as excinfo:
        await _decrypt(key_ring, encrypted)

    assert "10000-byte key id" in str(excinfo.value)
    assert len(str(excinfo.value)) < 200
