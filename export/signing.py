"""The bundle digest and its optional Ed25519 signature.

Every bundle carries ``digest.json`` beside ``manifest.json``: the sha256 of each other
member (the manifest included) and one overall digest over them. The overall digest is the
sha256 of a ``sha256sum``-style statement, one line per member sorted by name::

    <sha256 hex>  <name relative to the bundle folder>\\n

A signed bundle adds an Ed25519 signature (RFC 8032) over the ASCII bytes
``SIGNED_PREFIX + digest``. An app checks it on device with the public key it ships: see
``docs/security.md``. ``cryptography`` is imported inside the functions that need it, so
``import compress`` stays light.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from compress.core.errors import InputFileError

DIGEST_FILE = "digest.json"
DIGEST_SCHEME = "edgepack-bundle-digest/1"
SIGNED_PREFIX = "edgepack-bundle/1 sha256:"
SIGNATURE_ALGORITHM = "Ed25519"
PASSWORD_ENV = "EDGEPACK_KEY_PASSWORD"


def statement(files: dict[str, str]) -> bytes:
    """The canonical text the overall digest hashes: ``<sha256>  <name>\\n`` per member, sorted by name.

    Args:
        files: Member name (relative to the bundle folder) to its sha256 hex digest.
    """
    names = sorted(files, key=lambda n: n.encode("utf-8"))
    return "".join(f"{files[n]}  {n}\n" for n in names).encode("utf-8")


def overall_digest(files: dict[str, str]) -> str:
    """The sha256 hex digest of :func:`statement`."""
    return hashlib.sha256(statement(files)).hexdigest()


def signed_message(digest: str) -> bytes:
    """The exact bytes an Ed25519 signature covers."""
    return (SIGNED_PREFIX + digest).encode("ascii")


def digest_document(files: dict[str, bytes], private_key: Any | None = None) -> bytes:
    """``digest.json`` for the members ``files`` (manifest included), signed when a key is given.

    Args:
        files: Member name (relative to the bundle folder) to its bytes.
        private_key: An ``Ed25519PrivateKey`` from :func:`load_private_key`, or None for an unsigned bundle.
    """
    sums = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    digest = overall_digest(sums)
    doc: dict[str, Any] = {"scheme": DIGEST_SCHEME, "algorithm": "sha256",
                           "files": dict(sorted(sums.items())), "digest": digest, "signature": None}
    if private_key is not None:
        doc["signature"] = {"algorithm": SIGNATURE_ALGORITHM,
                            "public_key_sha256": key_fingerprint(private_key.public_key()),
                            "signed": SIGNED_PREFIX + "<digest>",
                            "value": base64.b64encode(private_key.sign(signed_message(digest))).decode("ascii")}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def key_fingerprint(public_key: Any) -> str:
    """sha256 hex of the raw 32-byte Ed25519 public key (names a key without showing it)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def raw_public_key_b64(public_key: Any) -> str:
    """The raw 32-byte Ed25519 public key, base64: what an app embeds to check signatures."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise InputFileError(f"{what} {path}: not found (make a key pair with `compress keygen KEYFILE`)")
    if path.stat().st_size > 64 * 1024:
        raise InputFileError(f"{what} {path}: too large to be a PEM key")
    return path.read_bytes()


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from a PEM file (encrypted keys take their password from ``$EDGEPACK_KEY_PASSWORD``).

    Raises:
        InputFileError: the file is missing, not PEM, encrypted without a password, or not Ed25519.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_key_file(path, "--sign")
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = load_pem_private_key(data, password=password.encode() if password else None)
    except TypeError as e:  # a password missing for an encrypted key, or given for a plain one
        need = f"set {PASSWORD_ENV} to its password" if not password else f"unset {PASSWORD_ENV}"
        raise InputFileError(f"--sign {path}: cannot read the key: {need}") from e
    except Exception as e:  # noqa: BLE001  (cryptography raises several types for a bad PEM)
        hint = " (that is a public key: pass the private one)" if b"PUBLIC KEY" in data else ""
        raise InputFileError(f"--sign {path}: not a PEM private key{hint}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InputFileError(f"--sign {path}: an Ed25519 private key is needed (got {type(key).__name__}); "
                             "make one with `compress keygen KEYFILE`")
    return key


def load_public_key(path: Path) -> Any:
    """An Ed25519 public key from a PEM file.

    Raises:
        InputFileError: the file is missing, not a PEM public key, or not Ed25519.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read_key_file(path, "--key")
    try:
        key = load_pem_public_key(data)
    except Exception as e:  # noqa: BLE001  (cryptography raises several types for a bad PEM)
        hint = " (that is the private key: pass the .pub file)" if b"PRIVATE KEY" in data else ""
        raise InputFileError(f"--key {path}: not a PEM public key{hint}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise InputFileError(f"--key {path}: an Ed25519 public key is needed (got {type(key).__name__})")
    return key


def check_signature(public_key: Any, digest: str, signature: Any) -> str | None:
    """None when ``signature`` (the ``signature`` object of ``digest.json``) signs ``digest`` with ``public_key``.

    Returns:
        Otherwise what is wrong, in words.
    """
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        return "the bundle is not signed, but --key was given: refusing an unsigned bundle"
    if not isinstance(signature, dict) or signature.get("algorithm") != SIGNATURE_ALGORITHM \
            or not isinstance(signature.get("value"), str):
        return f"digest.json: the signature is not an {SIGNATURE_ALGORITHM} signature object"
    want = key_fingerprint(public_key)
    got = signature.get("public_key_sha256")
    try:
        raw = base64.b64decode(signature["value"], validate=True)
    except ValueError:
        return "digest.json: the signature value is not base64"
    try:
        public_key.verify(raw, signed_message(digest))
    except InvalidSignature:
        if isinstance(got, str) and got != want:
            return (f"the bundle is signed by another key (fingerprint {got[:16]}...), "
                    f"not by --key (fingerprint {want[:16]}...)")
        return "the signature does not match the bundle's digest: the bundle was changed after it was signed"
    return None


def generate_keypair(private_path: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: the private key at ``private_path`` (mode 0600), the public key beside it.

    Returns:
        The private and the public key paths (``<private_path>.pub``).

    Raises:
        InputFileError: either file exists already, or the folder cannot be written.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise InputFileError(f"{p}: exists already; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    try:
        # O_EXCL with mode 0600: the key is never readable by others, not even for an instant
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise InputFileError(f"{private_path}: cannot create the key file ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        os.chmod(private_path, 0o600)  # whatever the umask
        public_path.write_bytes(public_pem)
    except OSError as e:
        private_path.unlink(missing_ok=True)
        public_path.unlink(missing_ok=True)
        raise InputFileError(f"{private_path}: cannot write the key pair ({e.strerror})") from e
    return private_path, public_path
