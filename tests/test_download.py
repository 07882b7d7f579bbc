"""Downloads against a real HTTP server on 127.0.0.1 that honours Range requests."""

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from codebrain.cli import main
from codebrain.data.download import download
from codebrain.data.layouts import discover
from codebrain.io import InputError
from conftest import REALDATA


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support (the standard handler ignores Range)."""

    requests: list = []

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        RangeHandler.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:  # an IXI-style tarball: flat NIfTI files
        for path in sorted((REALDATA / "ixi-thick" / "IXI002-Guys-0828").glob("*T1.nii.gz")):
            tar.add(path, arcname=path.name.removeprefix("ds_"))
    (served / "IXI-T1.tar").write_bytes(buffer.getvalue())
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verify_and_unpack(server, tmp_path):
    url, served = server
    digest = sha((served / "IXI-T1.tar").read_bytes())
    root = tmp_path / "IXI"
    assert main(["download", "--url", f"{url}/IXI-T1.tar#sha256={digest}", "--dest", str(tmp_path / "dl"),
                 "--root", str(root)]) == 0
    assert sha((tmp_path / "dl" / "IXI-T1.tar").read_bytes()) == digest
    assert (root / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz").exists()
    assert discover(root, "ixi", ["T1"])["IXI002-Guys-0828"]["T1"].parent.name == "IXI-T1"


def test_good_file_is_never_fetched_again(server, tmp_path):
    url, served = server
    digest = sha((served / "IXI-T1.tar").read_bytes())
    dest = tmp_path / "IXI-T1.tar"
    download(f"{url}/IXI-T1.tar", dest, digest)
    mtime, count = dest.stat().st_mtime_ns, len(RangeHandler.requests)
    download(f"{url}/IXI-T1.tar", dest, digest)
    assert len(RangeHandler.requests) == count and dest.stat().st_mtime_ns == mtime


def test_interrupted_download_resumes_with_range(server, tmp_path):
    url, served = server
    data = (served / "IXI-T1.tar").read_bytes()
    dest = tmp_path / "IXI-T1.tar"
    dest.with_name("IXI-T1.tar.part").write_bytes(data[:1000])  # what a killed download left
    download(f"{url}/IXI-T1.tar", dest, sha(data))
    assert RangeHandler.requests[-1] == ("/IXI-T1.tar", "bytes=1000-")
    assert dest.read_bytes() == data and not dest.with_name("IXI-T1.tar.part").exists()


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, _ = server
    dest = tmp_path / "IXI-T1.tar"
    with pytest.raises(InputError, match="checksum mismatch"):
        download(f"{url}/IXI-T1.tar", dest, "0" * 64)
    assert not dest.exists() and not dest.with_name("IXI-T1.tar.part").exists()


def test_missing_url_is_a_clear_error(server, tmp_path):
    url, _ = server
    with pytest.raises(InputError, match="nothing.tar: download failed with HTTP 404"):
        download(f"{url}/nothing.tar", tmp_path / "nothing.tar")


def test_the_shipped_samples_checksums_are_the_files_it_names():
    """config/brats-sample.yaml's download list: every one of the twenty cases' files, each URL's sha256 that of
    the same file in ../shared/realdata/brats2018 (copies of that repository's folder)."""
    import yaml

    repo = Path(__file__).parents[1]
    urls = yaml.safe_load((repo / "config" / "brats-sample.yaml").read_text())["download"]["urls"]
    shared = repo.parent / "shared" / "realdata" / "brats2018"
    files = sorted(p.relative_to(shared).as_posix() for p in shared.glob("Brats18_*/*.nii.gz"))
    named = {}
    for url in urls:
        address, digest = url.split("#sha256=")
        named[address.split("/sample_volume/brats/")[1]] = digest
    assert sorted(named) == files and len(files) == 100
    for path, digest in named.items():
        assert hashlib.sha256((shared / path).read_bytes()).hexdigest() == digest, path
