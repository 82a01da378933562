"""`verify`, `preview` and `info` on sets where the loader and `train` read them: served over http(s) by a
loopback web server, and on an S3 API server on loopback; each gives what it gives for the local folder."""

import datetime
import ipaddress
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from segshards.writer.cli.main import main
from tests.http_server import serve_folder
from tests.mnist_fixtures import SMALL, build_once, error_lines
from tests.moto_fixture import S3, s3_fixture  # noqa: F401  (fixture)

WEB_NOTE = " (over http(s) only the files the manifest lists are read: a web server lists no folder)"


@pytest.fixture
def grid(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Path:
    """A copy of a small mnist-grid set, free to damage."""
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    return Path(shutil.copytree(folder, tmp_path / "grid"))


@pytest.fixture
def served(grid: Path) -> Iterator[str]:
    """The set's folder served over http on loopback; yields its URL."""
    with serve_folder(grid) as url:
        yield url + "/"


@pytest.fixture
def served_tls(grid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The set's folder served over https on loopback, with a certificate for 127.0.0.1 that this test's
    processes trust (SSL_CERT_FILE); yields its URL."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with serve_folder(grid, tls=context) as url:
        yield url


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for IP 127.0.0.1 and its key, as PEM files in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    assert error_lines(captured.err) == []
    return captured.out


def test_verify_over_http(served: str, grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ok(capsys, "verify", served)
    assert out == f"{served}: ok, 5 shards, 420 samples, keys unique{WEB_NOTE}\n"
    data = bytearray((grid / "train-000001.tar").read_bytes())
    data[700] ^= 0xFF  # a byte of the shard's first member changed
    (grid / "train-000001.tar").write_bytes(bytes(data))
    assert main(["verify", served]) == 1
    err = capsys.readouterr().err
    assert f"{served.rstrip('/')}/train-000001.tar: sha256 differs from the manifest" in err


def test_verify_over_http_names_a_missing_shard(
    served: str, grid: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (grid / "val-000000.tar").unlink()
    assert main(["verify", served]) == 1
    err = capsys.readouterr().err
    assert f"{served.rstrip('/')}/val-000000.tar" in err and "1 problem(s)" in err


def test_verify_of_an_http_folder_without_a_set(
    served: str, grid: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (grid / "manifest.json").unlink()
    assert main(["verify", served]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"segshards: error: {served}manifest.json: no manifest (not a finished segshards set)"]


def test_preview_over_http_and_s3_draws_what_the_folder_draws(
    served: str, grid: Path, s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(capsys, "preview", str(grid), "-o", str(tmp_path / "local.png"), "--count", "12")
    ok(capsys, "preview", served, "-o", str(tmp_path / "http.png"), "--count", "12")
    ok(capsys, "publish", str(grid), s3.url("grid"))
    out = ok(capsys, "preview", s3.url("grid"), "-o", str(tmp_path / "s3.png"), "--count", "12")
    assert out == f"wrote {tmp_path / 's3.png'}: 12 train samples\n"
    local = (tmp_path / "local.png").read_bytes()
    assert (tmp_path / "http.png").read_bytes() == local
    assert (tmp_path / "s3.png").read_bytes() == local


def test_info_over_http_and_s3(served: str, grid: Path, s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    local = ok(capsys, "info", str(grid)).splitlines()
    assert local[0] == f"location  {grid}"
    over_http = ok(capsys, "info", served).splitlines()
    assert over_http == [f"location  {served.rstrip('/')}", *local[1:]]
    ok(capsys, "publish", str(grid), s3.url("sets/grid"))
    on_s3 = ok(capsys, "info", s3.url("sets/grid")).splitlines()
    assert on_s3 == [f"location  {s3.url('sets/grid')}", *local[1:]]


def test_info_of_a_missing_bucket_says_so(s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "s3://no-such-bucket-here/set"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines == [
        "segshards: error: s3://no-such-bucket-here: no such bucket (or not visible with these credentials)"
    ]


def test_verify_preview_and_info_over_https(
    served_tls: str, grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        ok(capsys, "verify", served_tls)
        == f"{served_tls}: ok, 5 shards, 420 samples, keys unique{WEB_NOTE}\n"
    )
    ok(capsys, "preview", str(grid), "-o", str(tmp_path / "local.png"), "--count", "4")
    ok(capsys, "preview", served_tls, "-o", str(tmp_path / "https.png"), "--count", "4")
    assert (tmp_path / "https.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    local = ok(capsys, "info", str(grid)).splitlines()
    assert ok(capsys, "info", served_tls).splitlines() == [f"location  {served_tls}", *local[1:]]


def test_an_untrusted_certificate_is_one_line_at_once_not_retried(
    served_tls: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")  # the default trust store does not know the test's certificate
    caplog.set_level("WARNING", logger="segshards.storage")
    assert main(["info", served_tls]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert served_tls in line and "certificate" in line.lower()
    assert [r for r in caplog.records if "retry" in r.getMessage().lower()] == []
