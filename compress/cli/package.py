"""`compress package`, `compress verify` and `compress keygen`: mobile bundles and their signing keys."""


from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli.root import _console, app, fail  # fail: a bundle member named ``[/]`` prints as itself
from compress.core.errors import EdgepackError, InputFileError


@app.command("package")
def package_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (holding report.json)")],
    artifact: Annotated[str, typer.Option("--artifact", "-a", help="artifact name from the report, e.g. tflite-int8")],
    platform: Annotated[str, typer.Option("--platform", "-p", help="android | ios | generic")] = "generic",
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle.zip to write")] = Path("bundle.zip"),
    golden: Annotated[int, typer.Option(help="number of golden test vectors")] = 4,
    force: Annotated[bool, typer.Option("--force", help="bundle even from a failed run or a failed parity check")] = False,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="Ed25519 private key PEM to sign the bundle with "
                                                 "(make one with `compress keygen`)")] = None,
) -> None:
    """Package one artifact of a run as a bundle an app can ship."""
    if platform not in ("android", "ios", "generic"):
        fail(InputFileError(f"--platform must be android, ios or generic (got {platform!r})"))
    from compress.cli.outputs import check_output_file
    from export.bundle import package_run

    try:
        check_output_file(out, "--out")
        info = package_run(run_dir, artifact, platform, out, golden=golden, force=force,  # type: ignore[arg-type]
                           sign_key=sign)
    except EdgepackError as e:
        fail(e)
    signed = f", signed by key {info['signed_by'][:16]}..." if info.get("signed_by") else ", unsigned"
    _console().print(f"bundle {info['path']}: {len(info['files'])} files under {info['prefix']}{signed}")
    if info.get("no_fingerprint"):
        _console().print(f"note: no fingerprint.json (compress drift cannot check this bundle): {info['no_fingerprint']}",
                         markup=False, soft_wrap=True)


@app.command("verify")
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle.zip")],
    key: Annotated[Optional[Path], typer.Option("--key", help="Ed25519 public key PEM: the bundle must be "
                                                "signed by it")] = None,
    max_member_mb: Annotated[float, typer.Option("--max-member-mb", help="largest model accepted, in MiB "
                                                 "(other files: 16 MiB)")] = 2048,
) -> None:
    """Check a bundle: safe names and sizes, checksums, the signature, the model loads, golden vectors reproduce.

    Exit 0 verified, 1 tampered or unsafe, 2 not a valid bundle (or a bad --key file).
    """
    from rich.text import Text

    from export.bundle_verify import show, verify_bundle

    try:
        res = verify_bundle(bundle, public_key=key, max_member_mb=max_member_mb)
    except EdgepackError as e:
        fail(e)
    c = _console()
    for line in res.checked:
        c.print(Text(f"ok    {line}"), soft_wrap=True)
    for line in res.notes:
        c.print(Text.assemble(("note", "yellow"), f"  {line}"), soft_wrap=True)
    if not res.ok:
        err = _console(stderr=True)
        for p in res.problems:
            err.print(Text.assemble(("FAIL", "red"), f"  {p}"), soft_wrap=True)
        raise typer.Exit(1)
    if res.signed_by:
        how = f"signed by key {res.signed_by[:16]}..."
    else:
        how = "signed, signature not checked" if res.has_signature else "unsigned: internal consistency only"
    c.print(Text(f"{show(bundle)}: verified ({how})"), soft_wrap=True)


@app.command("keygen")
def keygen_cmd(
    out: Annotated[Path, typer.Argument(help="private key file to write (the public key goes to OUT.pub)")],
) -> None:
    """Write an Ed25519 key pair for signing bundles: OUT (private, mode 0600) and OUT.pub (public)."""
    from export.signing import generate_keypair, key_fingerprint, load_public_key, raw_public_key_b64

    try:
        private, public = generate_keypair(out)
        pub = load_public_key(public)
        fingerprint, raw = key_fingerprint(pub), raw_public_key_b64(pub)
    except EdgepackError as e:
        fail(e)
    c = _console()
    c.print(f"private key {private} (mode 0600; keep it secret): compress package ... --sign {private}",
            markup=False, soft_wrap=True)
    c.print(f"public key  {public} (ship it in the app): compress verify bundle.zip --key {public}",
            markup=False, soft_wrap=True)
    c.print(f"fingerprint {fingerprint}", markup=False, soft_wrap=True)
    c.print(f"raw public key for the app (base64, 32 bytes): {raw}", markup=False, soft_wrap=True)
